"""One converter per `converter` of records/datasets.py: each module has NEEDS_SRC (False when
it can download the source), add_arguments(parser, dataset) for its own options, and
convert(dataset, src, root, *, formats, workers, strict, allow_subset, **options) ->
(manifest, report)."""

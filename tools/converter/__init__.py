"""The offline converter: datasets as published -> the records respipe's loaders read.

It needs only records/ (the table of datasets, the record format, the checker), never pipelines/
or train/ (tests/test_converter_imports.py fails otherwise):
- cli.py: `python tools/convert.py DATASET ...` and `verify`, one subcommand per table entry;
- datasets/: one converter per entry's `converter` (NEEDS_SRC, add_arguments, convert);
- sources/: readers of what users have (CIFAR tarballs, ImageNet archives or folders, images);
- writers/: the record formats, written atomically and resumably.
"""

"""The benchmark behind tools/bench.py: plan (sizes, backends, datasets, inputs checked up
front), parts (each part's rows over the datasets), measure (loaders, training, layouts),
conversion (the ImageNet converter against a PIL reference) and report (JSON, Markdown, chart)."""

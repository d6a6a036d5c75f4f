"""The benchmark behind tools/bench.py: measure (loaders, training, layouts), conversion
(the ImageNet converter against a PIL reference) and report (JSON, Markdown, chart)."""

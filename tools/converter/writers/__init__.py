"""Writers of the record formats (records/format.py): arrays, webdataset shards, FFCV .beton."""

"""Writers of respipe's record formats (FFCV .beton, DALI .npy / webdataset) and the manifest."""

"""The on-disk record format between tools/ (which write it) and pipelines/ (which read it)."""

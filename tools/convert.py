"""Convert a dataset into the record formats respipe's loaders read: the entry point of the
converter package, tools/converter/ (`python tools/convert.py --help`)."""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repo root, not from tools/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from tools.converter.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

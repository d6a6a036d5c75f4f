"""FFCV .beton writer: fields "image" (RGBImageField) and "label" (IntField).

FFCV's DatasetWriter waits forever when one of its worker processes raises. Inputs are
validated before writing, and a worker that still fails reports through a file; a watchdog
thread then interrupts the main thread, stops the workers and raises a clear error.
"""
from __future__ import annotations

import _thread
import multiprocessing
import sys
import threading
import traceback
from pathlib import Path

import numpy as np

from .atomic import OutputDir

MIN_PAGE = 1 << 21  # ffcv.writer.MIN_PAGE_SIZE
# Same layout as ffcv.types.HeaderType; lets `verify` count samples without importing ffcv/torch.
BETON_HEADER = np.dtype([("version", "<u2"), ("num_fields", "<u2"), ("page_size", "<u4"),
                         ("num_samples", "<u8"), ("alloc_table_ptr", "<u8")], align=True)


def import_ffcv():
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch else None
    try:
        from ffcv.fields import IntField, RGBImageField
        from ffcv.writer import DatasetWriter
    except ImportError as err:
        raise RuntimeError(f"the ffcv format needs ffcv ({err}); run `make install`") from None
    finally:
        if threads:  # importing ffcv drops torch to 1 thread in the caller's process
            torch.set_num_threads(threads)
    return DatasetWriter, RGBImageField, IntField


def page_size_for(max_sample_bytes: int) -> int:
    """FFCV pages must hold the largest sample (else its worker raises and the writer hangs);
    a JPEG is smaller than its raw pixels except for tiny images, which the 2 MiB floor covers."""
    return max(MIN_PAGE, 1 << (max_sample_bytes + (1 << 16) - 1).bit_length())


def beton_count(path: Path) -> int:
    return int(np.fromfile(path, dtype=BETON_HEADER, count=1)[0]["num_samples"])


def beton_payload(path: Path) -> int:
    """Bytes of sample data (the rest of the file is header and page slack)."""
    ptr = int(np.fromfile(path, dtype=BETON_HEADER, count=1)[0]["alloc_table_ptr"])
    table = np.fromfile(path, dtype=np.dtype([("sample", "<u8"), ("ptr", "<u8"),
                                              ("size", "<u8")]), offset=ptr)
    return int(table["size"].sum())


class _Guarded:
    """Runs in FFCV's worker processes: turns an exception into an error file."""

    def __init__(self, dataset, error_file: Path):
        self.dataset, self.error_file = dataset, error_file

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        try:
            return self.dataset[i]
        except BaseException as err:
            self.error_file.write_text(f"sample {i}: {type(err).__name__}: {err}\n"
                                       + traceback.format_exc())
            raise


def _watch(error_file: Path, stop: threading.Event) -> None:
    while not stop.wait(0.2):
        if error_file.exists():
            _thread.interrupt_main()
            return


def store_jpeg(destination, sample, malloc) -> None:
    """RGBImageField.encode for samples that already are (RGB JPEG bytes, height, width):
    stored as they are, so the image is not decoded and encoded again."""
    from ffcv.fields.rgb_image import IMAGE_MODES

    data, height, width = sample
    destination["mode"] = IMAGE_MODES["jpg"]
    destination["height"], destination["width"] = height, width
    destination["data_ptr"], storage = malloc(len(data))
    storage[:] = np.frombuffer(data, dtype=np.uint8)


def write_beton(out: OutputDir, rel: str, dataset, *, workers: int,
                jpeg_quality: int | None = None, page_size: int = MIN_PAGE,
                encoded: bool = False) -> str:
    """dataset[i] -> (uint8 HxWx3 RGB array, int label), already validated. jpeg_quality None
    stores raw pixels (lossless); else JPEG at that quality (max_resolution unset: inputs
    are pre-resized). encoded: dataset[i] -> ((RGB JPEG bytes, height, width), label),
    stored byte for byte."""
    DatasetWriter, RGBImageField, IntField = import_ffcv()
    if len(dataset) == 0:
        raise ValueError(f"{out.path(rel)}: no samples to write")
    image = (RGBImageField(write_mode="raw") if jpeg_quality is None
             else RGBImageField(write_mode="jpg", jpeg_quality=jpeg_quality))
    if encoded:  # an instance attribute: the .beton still records an RGBImageField
        image.encode = store_jpeg
    tmp = out.tmp_path(rel)
    error_file = tmp.with_name(tmp.name + ".error")
    writer = DatasetWriter(str(tmp), {"image": image, "label": IntField()},
                           page_size=page_size, num_workers=workers)
    before = set(multiprocessing.active_children())
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        threading.Thread(target=_watch, args=(error_file, stop), daemon=True).start()
    try:
        chunksize = max(1, min(100, len(dataset) // (4 * writer.num_workers)))  # balanced tail
        writer.from_indexed_dataset(_Guarded(dataset, error_file), chunksize=chunksize)
    except KeyboardInterrupt:
        if not error_file.exists():
            raise
        for proc in set(multiprocessing.active_children()) - before:
            proc.terminate()
        sm = getattr(writer, "metadata_sm", None)
        if sm is not None:
            sm.close()
            sm.unlink()
        message = error_file.read_text().splitlines()[0]
        error_file.unlink()
        raise RuntimeError(f"FFCV writer failed on {out.path(rel)}: {message}") from None
    finally:
        stop.set()
    return out.commit(rel, tmp, samples=len(dataset))

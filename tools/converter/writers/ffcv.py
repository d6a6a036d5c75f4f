"""FFCV .beton writer: fields "image" (RGBImageField) and "label" (IntField).

FFCV's DatasetWriter waits forever when one of its worker processes raises or dies. Inputs are
validated before writing; a worker that still fails reports through a file (or dies), and a
watchdog thread then interrupts the main thread, which stops the workers and raises a clear
error. Workers die with the converter (children.die_with_parent); on any interruption the
workers, FFCV's shared memory and the temporary file are cleaned up before the error goes on.
"""
from __future__ import annotations

import _thread
import errno
import multiprocessing
import os
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np

from records.format import BETON_HEADER

from .atomic import OutputDir, disk_full
from .children import die_with_parent

MIN_PAGE = 1 << 21  # ffcv.writer.MIN_PAGE_SIZE


def import_ffcv():
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch else None
    try:
        from ffcv.fields import IntField, RGBImageField
        from ffcv.fields.rgb_image import IMAGE_MODES
        from ffcv.writer import DatasetWriter

        # numba compiles this typed-dict lookup on first use (0.15 s): here, once, rather
        # than in each writer process forked for each split (they inherit it).
        IMAGE_MODES["jpg"]
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


def beton_payload(path: Path) -> int:
    """Bytes of sample data (the rest of the file is header and page slack)."""
    ptr = int(np.fromfile(path, dtype=BETON_HEADER, count=1)[0]["alloc_table_ptr"])
    table = np.fromfile(path, dtype=np.dtype([("sample", "<u8"), ("ptr", "<u8"),
                                              ("size", "<u8")]), offset=ptr)
    return int(table["size"].sum())


# Test hook: seconds each FFCV writer worker sleeps per sample, so a test can interrupt the
# write phase while its temporary file exists.
SLEEP_ENV = "RESPIPE_CONVERT_TEST_FFCV_SLEEP"


def _report(error_file: Path, where: str, err: BaseException) -> None:
    if not error_file.exists():  # the first error is the one to report
        code = f" [errno {err.errno}]" if isinstance(err, OSError) and err.errno else ""
        partial = error_file.with_name(f"{error_file.name}.{os.getpid()}")
        partial.write_text(f"{where}{type(err).__name__}: {err}{code}\n" + traceback.format_exc())
        os.replace(partial, error_file)  # the watchdog never reads half a report


class _Guarded:
    """Runs in FFCV's worker processes: turns an exception into an error file."""

    def __init__(self, dataset, error_file: Path):
        self.dataset, self.error_file = dataset, error_file
        self.sleep = float(os.environ.get(SLEEP_ENV, "0") or 0)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        if self.sleep:
            time.sleep(self.sleep)
        try:
            return self.dataset[i]
        except BaseException as err:
            _report(self.error_file, f"sample {i}: ", err)
            raise


def _worker_class(error_file: Path, started: list):
    """FFCV's writer Process, made to die with this process and to report any error (a full
    disk shows up in a worker: the workers write the pages)."""
    parent = os.getpid()

    class Worker(multiprocessing.Process):
        def start(self):
            super().start()
            started.append(self)

        def run(self):
            die_with_parent(parent)
            try:
                super().run()
            except BaseException as err:
                _report(error_file, "", err)
                sys.exit(1)  # reported: no traceback from every worker

    return Worker


def _failed(error_file: Path, started: list) -> bool:
    """A worker reported an error or died (killed, out of memory)."""
    return error_file.exists() or any(p.exitcode not in (None, 0) for p in started)


def _watch(error_file: Path, started: list, stop: threading.Event,
           tripped: threading.Event) -> None:
    while not stop.wait(0.2):
        if _failed(error_file, started):
            tripped.set()
            _thread.interrupt_main()
            return


def _stop(writer, started: list, tmp: Path, error_file: Path) -> None:
    """After a failure or an interruption: no worker, shared memory or temporary file left."""
    for proc in started:
        if proc.exitcode is None:
            proc.kill()
    for proc in started:
        proc.join(timeout=5)
    sm = getattr(writer, "metadata_sm", None)
    if sm is not None and not isinstance(sm, int):
        sm.close()
        try:
            sm.unlink()
        except FileNotFoundError:
            pass
    tmp.unlink(missing_ok=True)
    error_file.unlink(missing_ok=True)


def _failure(path: Path, error_file: Path, started: list) -> Exception:
    if error_file.exists():
        message = error_file.read_text().splitlines()[0]
        if f"[errno {errno.ENOSPC}]" in message:
            return disk_full(path)
    else:
        codes = [p.exitcode for p in started if p.exitcode not in (None, 0)]
        message = f"a worker process exited with status {codes[0]}"
    return RuntimeError(f"FFCV writer failed on {path}: {message}")


def _poll(_seconds: float) -> None:
    """FFCV's writer checks its workers' progress every 0.1 s, so a .beton takes up to 0.1 s
    past its last sample; 10 ms instead."""
    time.sleep(0.01)


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
    import ffcv.writer

    if encoded:  # an instance attribute: the .beton still records an RGBImageField
        image.encode = store_jpeg
    tmp = out.tmp_path(rel)
    error_file = tmp.with_name(tmp.name + ".error")
    writer = DatasetWriter(str(tmp), {"image": image, "label": IntField()},
                           page_size=page_size, num_workers=workers)
    started: list = []
    stop, tripped = threading.Event(), threading.Event()
    if threading.current_thread() is threading.main_thread():
        threading.Thread(target=_watch, args=(error_file, started, stop, tripped),
                         daemon=True).start()
    stock_process, ffcv.writer.Process = ffcv.writer.Process, _worker_class(error_file, started)
    stock_sleep, ffcv.writer.sleep = ffcv.writer.sleep, _poll  # its progress loop: 0.1 s naps
    try:
        chunksize = max(1, min(100, len(dataset) // (4 * writer.num_workers)))  # balanced tail
        writer.from_indexed_dataset(_Guarded(dataset, error_file), chunksize=chunksize)
    except BaseException:
        stop.set()
        # The watchdog's interrupt is a worker's failure; any other, the user's (or a signal's).
        error = _failure(out.path(rel), error_file, started) if tripped.is_set() else None
        _stop(writer, started, tmp, error_file)
        if error is None:
            raise  # an interruption (Ctrl-C, SIGTERM): the caller reports it
        raise error from None
    finally:
        stop.set()
        ffcv.writer.Process, ffcv.writer.sleep = stock_process, stock_sleep
    return out.commit(rel, tmp, samples=len(dataset))

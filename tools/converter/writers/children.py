"""Worker processes that never outlive the converter.

Forked workers (the ImageNet decode pool, FFCV's writer processes) would otherwise survive a
`kill -9` of the converter, blocked on queues nobody feeds. `die_with_parent` runs first in each
worker: the kernel sends it SIGKILL when the converter dies (Linux PR_SET_PDEATHSIG), and Ctrl-C
(SIGINT to the whole terminal process group) is left to the converter, which stops its workers
and exits with one line instead of one traceback per process. Workers close their copies of the
output folder's lock, so only the converter holds it.
"""
from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    from .atomic import LOCK_FDS

    for fd in LOCK_FDS:
        os.close(fd)
    LOCK_FDS.clear()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the converter's handler (forked)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the converter's own cleanup still applies
        pass
    if os.getppid() != parent_pid:  # the converter died before prctl took effect
        os._exit(1)

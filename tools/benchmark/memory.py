"""Peak memory of a benchmark process and of its children."""
from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak RSS in MB of this process (RUSAGE_SELF) or of its largest reaped child
    (RUSAGE_CHILDREN). For this process Linux's VmHWM: ru_maxrss carries over exec the peak of
    the process that started this one (a benchmark started from a big parent would report the
    parent's)."""
    status = Path("/proc/self/status")
    if who == resource.RUSAGE_SELF and status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)

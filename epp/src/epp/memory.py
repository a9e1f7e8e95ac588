"""Memory that comes back after a burst of large request bodies.

glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), so after a burst of
large bodies the next ones are carved from the heap and its arenas, and the freed space stays
resident (fragmented) instead of going back to the system: a BBR that held 40 held 15 MB bodies
stayed hundreds of MB larger after they closed. Fixing the threshold turns that adjustment off:
blocks above it are mapped on their own and unmapped when freed. Called once at start-up; on a libc
without ``mallopt`` (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

_log = logging.getLogger("epp.memory")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks at least this large are mapped on their own (glibc's own default, kept fixed).
MMAP_THRESHOLD = 128 * 1024
# Free heap above this much at the top is given back.
TRIM_THRESHOLD = 1 << 20


def return_large_blocks() -> bool:
    """Fix glibc's mmap and trim thresholds; False where the C library has no ``mallopt``."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    fixed = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    fixed = bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and fixed
    if not fixed:
        _log.warning("could not fix the allocator's thresholds; memory may stay resident after bursts")
    return fixed

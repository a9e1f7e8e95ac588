"""Memory that comes back after a burst of large request bodies.

Two things of glibc's allocator keep a server that held large bodies large after they are gone:

- It raises its mmap threshold each time a large block is freed (up to 32 MiB), so after a burst the
  next large bodies are carved from the heap and its arenas instead of being mapped on their own.
  :func:`return_large_blocks` fixes the threshold at start-up: blocks above it are mapped on their
  own and unmapped when freed.
- Small blocks freed in the middle of an arena stay resident: gRPC's threads receive each message in
  pieces of a few KB to 64 KB, from their own arenas, and a burst leaves those arenas mostly free but
  resident (measured: 7 to 48 MiB after 40 held 15 MB bodies, up to 430 MiB when gRPC took whole
  bodies in). Only the free space at an arena's top is trimmed by itself; :class:`Trimmer` calls
  ``malloc_trim(0)``, which gives back the free pages anywhere in every arena, once a burst is over.

On a C library without ``mallopt``/``malloc_trim`` (musl, macOS) both do nothing.

Python's own cyclic collector is the third: every full collection walks every tracked object alive,
the start-up's tens of thousands (modules, protobuf descriptors, the compiled scheduling plan) each
time, while requests wait on the one event loop. :func:`freeze_startup_heap` moves them out of its
reach once the server serves (measured under ``bench.overhead``'s load: a full collection of the
EPP while serving took 34-42 ms, 0.4-0.5 ms once frozen).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Callable

_log = logging.getLogger("epp.memory")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks at least this large are mapped on their own (glibc's own default, kept fixed).
MMAP_THRESHOLD = 128 * 1024
# Free heap above this much at the top is given back.
TRIM_THRESHOLD = 1 << 20
# A burst is this many body bytes released since the last trim; it is over once the bodies still
# held are back under it.
TRIM_AFTER = 32 << 20


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name)
    except (OSError, TypeError):
        return None


def return_large_blocks() -> bool:
    """Fix glibc's mmap and trim thresholds; False where the C library has no ``mallopt``."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    fixed = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    fixed = bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and fixed
    if not fixed:
        _log.warning("could not fix the allocator's thresholds; memory may stay resident after bursts")
    return fixed


def freeze_startup_heap() -> int:
    """Collect what start-up left behind, then freeze every object still alive (``gc.freeze``): the
    cyclic collector no longer walks them, so a full collection while serving walks only what came
    since. Returns how many objects are frozen. For a server process once it serves: a frozen object
    that later becomes cyclic garbage is never freed."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def malloc_trim() -> Callable[[], bool] | None:
    """glibc's ``malloc_trim(0)`` (True when it gave memory back), or None where there is none."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int

    def trim_all() -> bool:
        return bool(trim(0))

    return trim_all


class Trimmer:
    """Told each release of body bytes (``BodyBudget.on_release``): once at least ``after`` bytes were
    released since the last trim and what is still held is back under ``after``, the burst is over
    and the allocator's free memory goes back to the system (``trim``: :func:`malloc_trim`'s).

    The trim runs on a worker thread when an event loop is running (ctypes lets go of the GIL):
    giving back a fragmented 64 MB took 10 to 40 ms here, which the loop should not wait for. One
    trim at a time; a burst that ends while one runs is trimmed by it or the next.
    """

    __slots__ = ("after", "released", "trim", "trimming", "trims")

    def __init__(self, trim: Callable[[], bool] | None, after: int = TRIM_AFTER) -> None:
        if after <= 0:
            raise ValueError(f"a burst must be a positive number of bytes, got {after}")
        self.trim = trim
        self.after = after
        self.released = 0
        self.trims = 0
        self.trimming = False

    def __call__(self, size: int, held: int) -> None:
        self.released += size
        if self.released < self.after or held >= self.after or self.trimming:
            return
        self.released = 0
        self.trims += 1
        if self.trim is None:
            return
        self.trimming = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: here and now
            self._run()
            return
        loop.run_in_executor(None, self._run)

    def _run(self) -> None:
        assert self.trim is not None
        try:
            self.trim()
        finally:
            self.trimming = False

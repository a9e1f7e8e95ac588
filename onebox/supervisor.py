"""Child processes of the one box: started in their own process groups, watched, stopped.

Every child runs in a new session (its own process group), so stopping signals the whole group
and leaves nothing behind; on Linux a child also receives SIGTERM if this process dies without
cleaning up (``PR_SET_PDEATHSIG``). Each child's merged stdout/stderr is drained continuously
into a bounded tail (and optionally a log file), which is what a death report shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from onebox.probes import Probe

TAIL_LINES = 30


class ChildDied(RuntimeError):
    """A child exited while it was supposed to be running (or never became ready)."""

    def __init__(
        self, name: str, returncode: int | None, tail: Sequence[str], reason: str = "exited"
    ) -> None:
        self.name = name
        self.returncode = returncode
        self.tail = list(tail)
        code = "" if returncode is None else f" with code {returncode}"
        lines = "\n".join(f"  | {line}" for line in self.tail) or "  | (no output)"
        super().__init__(f"{name} {reason}{code}; its last output lines:\n{lines}")


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it if the supervising process disappears."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class Child:
    """One running child process."""

    name: str
    argv: list[str]
    process: asyncio.subprocess.Process
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.returncode is None


class Supervisor:
    """Starts children, waits for their readiness, reports the first unexpected death, stops them all."""

    def __init__(
        self, log_dir: Path | None = None, on_death: Callable[[ChildDied], None] | None = None
    ) -> None:
        self.children: list[Child] = []
        self.log_dir = log_dir
        self.failure: ChildDied | None = None
        self.failed = asyncio.Event()
        self._on_death = on_death
        self._stopping = False
        self._watchers: list[asyncio.Task[None]] = []

    async def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Child:
        """Spawn ``argv`` as ``name`` in its own process group and start watching it."""
        if self._stopping:
            raise RuntimeError(f"cannot start {name}: the supervisor is stopping")
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            env={**os.environ, **(env or {})},
        )
        child = Child(name, list(argv), process)
        child.reader = asyncio.create_task(self._drain(child, self._open_log(name)), name=f"drain {name}")
        self.children.append(child)
        self._watchers.append(asyncio.create_task(self._watch(child), name=f"watch {name}"))
        return child

    def _open_log(self, name: str) -> BinaryIO | None:
        if self.log_dir is None:
            return None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return open(self.log_dir / f"{name}.log", "ab")  # closed by _drain

    async def _drain(self, child: Child, log: BinaryIO | None) -> None:
        assert child.process.stdout is not None
        try:
            while line := await child.process.stdout.readline():
                child.tail.append(line.decode(errors="replace").rstrip())
                if log:
                    log.write(line)
                    log.flush()
        finally:
            if log:
                log.close()

    async def _watch(self, child: Child) -> None:
        returncode = await child.process.wait()
        if child.reader:
            # The output pipe closes when the process (and anything it forked) is gone.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(child.reader), 1.0)
        if self._stopping or self.failure is not None:
            return
        self.failure = ChildDied(child.name, returncode, child.tail)
        self.failed.set()
        if self._on_death:
            self._on_death(self.failure)

    async def wait_ready(self, child: Child, probe: Probe, within: float, interval: float = 0.05) -> None:
        """Return once ``probe`` passes; raise ``ChildDied`` if the child exits or ``within`` s pass first."""
        deadline = time.monotonic() + within
        while True:
            if not child.running:
                await asyncio.sleep(0)  # let the watcher record the death first
                raise self.failure or ChildDied(child.name, child.process.returncode, child.tail)
            if await probe():
                return
            if time.monotonic() > deadline:
                raise ChildDied(child.name, None, child.tail, reason=f"was not ready after {within:.0f} s")
            await asyncio.sleep(interval)

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM every child's process group, SIGKILL what is left after ``grace`` seconds, reap all."""
        self._stopping = True
        for child in reversed(self.children):
            _signal_group(child, signal.SIGTERM)
        waits = [asyncio.create_task(c.process.wait()) for c in self.children]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=grace)
            for child in self.children:
                # Also the group's stragglers if the leader is already gone.
                _signal_group(child, signal.SIGKILL)
            if pending:
                await asyncio.wait(pending)
            # SIGKILL is delivered, but a group's other members may still be exiting: return once
            # none of them runs, so a stopped box leaves no process behind. (Bounded: a process
            # stuck in the kernel cannot hold the stop forever; the kill is already on its way.)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    while any(_group_running(c.pid) for c in self.children):  # noqa: ASYNC110 - foreign exits
                        await asyncio.sleep(0.02)
        tasks = [*self._watchers, *(c.reader for c in self.children if c.reader)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _group_running(pgid: int) -> bool:
    """True while a process of group ``pgid`` runs (zombies, dead but not yet reaped, do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process went away while we looked
            continue
        # After the command name: state, ppid, pgrp, ...
        if fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def _signal_group(child: Child, sig: signal.Signals) -> None:
    # The child is its own session leader, so its process group id is its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, sig)

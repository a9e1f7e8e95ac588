"""Child processes of the one box: started in their own process groups, watched, stopped.

Every child runs in a new session (its own process group), so stopping signals the whole group
and leaves nothing behind; on Linux a child also receives SIGTERM if this process dies without
cleaning up (``PR_SET_PDEATHSIG``). Each child's merged stdout/stderr is drained continuously
into a bounded tail (and optionally a log file), which is what a death report shows.

A child binds port 0 and says which ports it got (``ChildSpec.ports`` reads them, from its output
or wherever it reports them); ``wait_ready`` returns them once the child's readiness probe passes.

Two ways to meet a death. Fail fast (no ``restart`` policy): the first child to die unexpectedly
is the supervisor's ``failure``, for the owner to stop everything. Supervised (a ``Backoff``): a
child that dies after it was once ready is logged with its last lines and started again with the
ports it had, after a delay that doubles with each quick death, while every other child keeps
serving; a child that dies before it was ever ready is still a ``failure`` (a bad flag does not
get better by retrying).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import resource
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from onebox.probes import Probe

TAIL_LINES = 30
_log = logging.getLogger("onebox.supervisor")

# The ports a child bound, by role ("http", "grpc", "health", "listener", ...).
Ports = dict[str, int]
# Given the ports of the previous run ({} on the first start: bind port 0), the command to run.
Argv = Callable[[Ports], Sequence[str]]
# How to learn the ports a freshly started child bound.
PortReader = Callable[["Child"], Awaitable[Ports]]
# A child's readiness probe, once its ports are known.
ProbeFor = Callable[[Ports], Probe]
# Reads one output line: the ports it announces, or None.
LineParser = Callable[[str], Ports | None]


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


def _prepare_child() -> None:
    """Runs in the child before exec: die with the supervisor, and take every file descriptor allowed.

    SIGTERM if the supervising process disappears; the soft open-files limit raised to the hard one,
    because Envoy holds two sockets per request in flight and the default soft limit is often 1,024.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port(host: str, kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A port nothing holds on ``host`` now (TCP, or UDP with ``SOCK_DGRAM``), for a child that is told
    its port rather than reporting one it bound (it binds it a moment later; a restart reuses it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def announced(parse: LineParser) -> PortReader:
    """A port reader for children that print the ports they bound: the first line ``parse`` accepts."""

    async def read(child: Child) -> Ports:
        return await child.first_line(parse)

    return read


def _no_ports(argv: Sequence[str]) -> Argv:
    return lambda _: argv


async def _none(_: Child) -> Ports:
    return {}


@dataclass(frozen=True)
class Backoff:
    """When to start a dead child again: ``first`` s, doubling per quick death, at most ``longest`` s.

    A run that lasted ``stable_after`` s resets the delay; a restarted child that is not ready
    within ``ready_within`` s is killed and counts as another death.
    """

    first: float = 0.2
    factor: float = 2.0
    longest: float = 10.0
    stable_after: float = 30.0
    ready_within: float = 60.0

    def delay(self, quick_deaths: int) -> float:
        return float(min(self.longest, self.first * self.factor ** max(0, quick_deaths - 1)))


@dataclass(frozen=True)
class ChildSpec:
    """How to run one child: its command, how it reports its ports, and how to tell it is ready."""

    name: str
    argv: Argv
    ports: PortReader = _none
    probe: ProbeFor | None = None
    env: dict[str, str] | None = None


@dataclass
class Child:
    """One supervised child; ``process`` is its current run."""

    spec: ChildSpec
    process: asyncio.subprocess.Process
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    reader: asyncio.Task[None] | None = None
    ports: Ports = field(default_factory=dict)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float = field(default_factory=time.monotonic)
    ready_once: bool = False
    retired: bool = False  # stopped on purpose (scaled down): its exit is no death
    restarts: int = 0
    quick_deaths: int = 0
    _matchers: list[tuple[LineParser, asyncio.Future[Ports]]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def argv(self) -> list[str]:
        return list(self.spec.argv(self.ports))

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def first_line(self, parse: LineParser) -> asyncio.Future[Ports]:
        """The ports announced by the first output line (already seen or still to come) ``parse`` accepts."""
        future: asyncio.Future[Ports] = asyncio.get_running_loop().create_future()
        for line in self.tail:
            if (ports := parse(line)) is not None:
                future.set_result(ports)
                return future
        self._matchers.append((parse, future))
        return future

    def _line(self, line: str) -> None:
        self.tail.append(line)
        for entry in list(self._matchers):
            parse, future = entry
            if future.done():
                self._matchers.remove(entry)
            elif (ports := parse(line)) is not None:
                future.set_result(ports)
                self._matchers.remove(entry)


class Supervisor:
    """Starts children, waits for their readiness, reports the first unexpected death, stops them all."""

    def __init__(
        self,
        log_dir: Path | None = None,
        on_death: Callable[[ChildDied], None] | None = None,
        restart: Backoff | None = None,
    ) -> None:
        self.children: list[Child] = []
        self.log_dir = log_dir
        self.failure: ChildDied | None = None
        self.failed = asyncio.Event()
        self.restart = restart
        self.deaths: list[ChildDied] = []  # every unexpected death, in order
        self._on_death = on_death
        self._stopping = False
        self._spawning = asyncio.Lock()  # stop() waits for a restart's spawn to finish
        self._watchers: list[asyncio.Task[None]] = []
        self._restarts: list[asyncio.Task[None]] = []

    async def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Child:
        """Spawn ``argv`` as ``name`` in its own process group and start watching it."""
        return await self.launch(ChildSpec(name, _no_ports(list(argv)), env=env))

    async def launch(self, spec: ChildSpec) -> Child:
        """Spawn ``spec`` (its ports not known yet: it binds port 0) and start watching it."""
        if self._stopping:
            raise RuntimeError(f"cannot start {spec.name}: the supervisor is stopping")
        child = Child(spec, await self._spawn(spec, {}))
        self.children.append(child)
        self._follow(child)
        return child

    async def _spawn(self, spec: ChildSpec, ports: Ports) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *spec.argv(ports),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_prepare_child if sys.platform == "linux" else None,
            env={**os.environ, **(spec.env or {})},
        )

    def _follow(self, child: Child) -> None:
        child.exited.clear()
        child.reader = asyncio.create_task(
            self._drain(child, self._open_log(child.name)), name=f"drain {child.name}"
        )
        self._watchers.append(asyncio.create_task(self._watch(child), name=f"watch {child.name}"))

    def _open_log(self, name: str) -> BinaryIO | None:
        if self.log_dir is None:
            return None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Only their owner may read them (0600, whatever the umask or an older file's mode).
        fd = os.open(self.log_dir / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)
        return open(fd, "ab")  # closed by _drain

    async def _drain(self, child: Child, log: BinaryIO | None) -> None:
        assert child.process.stdout is not None
        try:
            while line := await child.process.stdout.readline():
                child._line(line.decode(errors="replace").rstrip())
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
        child.exited.set()
        if self._stopping or self.failure is not None or child.retired:
            return
        death = ChildDied(child.name, returncode, child.tail)
        self.deaths.append(death)
        if self._on_death:
            self._on_death(death)
        if self.restart is None or not child.ready_once:
            self.failure = death
            self.failed.set()
            return
        quick = time.monotonic() - child.started_at < self.restart.stable_after
        child.quick_deaths = child.quick_deaths + 1 if quick else 1
        delay = self.restart.delay(child.quick_deaths)
        _log.warning("%s; restarting it in %.1f s", death, delay)
        self._restarts.append(asyncio.create_task(self._restart(child, delay), name=f"restart {child.name}"))

    async def _restart(self, child: Child, delay: float) -> None:
        assert self.restart is not None
        await asyncio.sleep(delay)
        async with self._spawning:
            if self._stopping or child.retired:
                return
            child.process = await self._spawn(child.spec, child.ports)
            child.started_at = time.monotonic()
            child.restarts += 1
            child._matchers.clear()
            self._follow(child)
        before = dict(child.ports)
        try:
            ports = await self.wait_ready(child, within=self.restart.ready_within)
        except ChildDied as error:
            if child.running and not self._stopping:  # alive but not ready: a death of its own
                _log.warning("%s; killing it", error)
                _signal_group(child, signal.SIGKILL)
            return
        if ports != before:
            _log.warning("%s came back on other ports %s (was %s)", child.name, ports, before)
        _log.warning("%s is back (restart %d)", child.name, child.restarts)

    async def wait_ready(
        self, child: Child, probe: Probe | None = None, within: float = 60.0, interval: float = 0.05
    ) -> Ports:
        """The child's ports once it reported them and ``probe`` (else its spec's probe) passes.

        Raises ``ChildDied`` if the child exits or ``within`` seconds pass first.
        """
        deadline = time.monotonic() + within
        ports = await self._until(child, child.spec.ports(child), deadline, within)
        child.ports = ports
        check = probe or (child.spec.probe(ports) if child.spec.probe else None)
        while check is not None:
            if not child.running:
                await asyncio.sleep(0)  # let the watcher record the death first
                raise self.failure or ChildDied(child.name, child.process.returncode, child.tail)
            if await check():
                break
            if time.monotonic() > deadline:
                raise ChildDied(child.name, None, child.tail, reason=f"was not ready after {within:.0f} s")
            await asyncio.sleep(interval)
        child.ready_once = True
        return ports

    async def _until(self, child: Child, reading: Awaitable[Ports], deadline: float, within: float) -> Ports:
        """``reading``'s result, unless the child exits or the deadline passes first."""
        task = asyncio.ensure_future(reading)
        exited = asyncio.ensure_future(child.exited.wait())
        try:
            await asyncio.wait([task, exited], timeout=max(0.0, deadline - time.monotonic()),
                               return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                return task.result()
            if exited.done() or not child.running:
                await asyncio.sleep(0)
                raise self.failure or ChildDied(child.name, child.process.returncode, child.tail)
            raise ChildDied(child.name, None, child.tail, reason=f"was not ready after {within:.0f} s")
        finally:
            for pending in (task, exited):
                pending.cancel()
            await asyncio.gather(task, exited, return_exceptions=True)

    async def retire(self, child: Child, grace: float = 5.0) -> None:
        """Stop one child on purpose (a pod scaled down): SIGTERM, SIGKILL after ``grace`` s, forget it."""
        child.retired = True
        async with self._spawning:  # not in the middle of a restart's spawn
            _signal_group(child, signal.SIGTERM)
        try:
            await asyncio.wait_for(child.process.wait(), grace)
        except TimeoutError:
            _signal_group(child, signal.SIGKILL)
            await child.process.wait()
        if child in self.children:
            self.children.remove(child)

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM every child's process group, SIGKILL what is left after ``grace`` seconds, reap all."""
        self._stopping = True
        async with self._spawning:  # no restart spawns a process from here on
            pass
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
        tasks = [*self._restarts, *self._watchers, *(c.reader for c in self.children if c.reader)]
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

"""``python -m onebox.faults``: faults and overload against a running one box, and what clients saw.

Each scenario returns its figures (answers by kind, recovery time); the fault-injection tests
(``tests/faults``) assert on them, and ``main`` prints them for the ``gpu`` box:

- ``burst``: N requests at once;
- ``idle_flood``: N connections that send a request's headers and never its body, while a
  ``/v1/models`` and a chat request are sent beside them;
- ``kill_and_recover``: ``kill -9`` of one child under traffic; the supervisor restarts it;
- ``stopped_pod``: ``kill -STOP`` of a pod: its requests end after the upstream idle timeout;
- on the ``scaleout`` box (4 pods of one model), under a steady load: ``killed_pod`` (``kill -9``,
  left dead) and ``stopped_pod_under_load`` (``kill -STOP``, continued later): how many requests
  fail from 2 s after the fault on, and when the last request was sent to the faulty pod;
- ``soak``: N requests, and every child's resident memory after warm-up and after them.

Every connection is to 127.0.0.1; every count and wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from epp.contract import POD_HEADER

from onebox.box import OneBox
from onebox.envoy.limits import GatewayTimeouts
from onebox.supervisor import Backoff
from onebox.topology import load_preset


@dataclass(frozen=True, slots=True)
class Answer:
    """What one request got: the status, whether the body was an OpenAI-style error or empty."""

    status: int
    kind: str  # "ok", "json-error", "empty", "other"
    error_type: str | None = None
    retry_after: bool = False
    at: float = 0.0  # seconds since the scenario's reference moment, when the answer was complete
    sent: float = 0.0  # seconds since the reference moment, when the request was sent
    pod: str | None = None  # the pod that answered (its x-inference-pod header)

    @property
    def label(self) -> str:
        if self.status == 200:
            return "200"
        extra = f" {self.error_type}" if self.error_type else ""
        after = " +Retry-After" if self.retry_after else ""
        return f"{self.status} {self.kind}{extra}{after}"


async def _classify(response: aiohttp.ClientResponse, started: float, sent: float = 0.0) -> Answer:
    body = await response.read()
    at = time.monotonic() - started
    retry_after = "retry-after" in response.headers
    pod = response.headers.get(POD_HEADER)
    if response.status == 200:
        return Answer(200, "ok", at=at, sent=sent, pod=pod)
    if not body:
        return Answer(response.status, "empty", retry_after=retry_after, at=at, sent=sent, pod=pod)
    try:
        error = json.loads(body)["error"]
        return Answer(response.status, "json-error", str(error["type"]), retry_after, at, sent, pod)
    except (ValueError, KeyError, TypeError):
        return Answer(response.status, "other", retry_after=retry_after, at=at, sent=sent, pod=pod)


def chat(model: str, max_tokens: int = 2) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": max_tokens}


async def _post(session: aiohttp.ClientSession, url: str, model: str, started: float) -> Answer:
    sent = time.monotonic() - started
    try:
        async with session.post(f"{url}/v1/chat/completions", json=chat(model)) as response:
            return await _classify(response, started, sent)
    except (aiohttp.ClientError, TimeoutError) as error:
        kind = f"connection error ({type(error).__name__})"
        return Answer(0, kind, at=time.monotonic() - started, sent=sent)


def tally(answers: list[Answer]) -> dict[str, int]:
    return dict(Counter(a.label for a in answers).most_common())


@dataclass(frozen=True, slots=True)
class BurstResult:
    answers: list[Answer]
    seconds: float

    def __str__(self) -> str:
        answered = f"answered in {self.seconds:.1f} s"
        return f"{len(self.answers)} requests at once, {answered}: {tally(self.answers)}"


async def burst(box: OneBox, requests: int = 1500) -> BurstResult:
    """``requests`` chat requests sent at once, each on its own connection, across the box's models."""
    models = box.topology.served_names
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=120)
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        answers = await asyncio.gather(
            *(_post(session, box.gateway_url, models[i % len(models)], started) for i in range(requests))
        )
    return BurstResult(list(answers), time.monotonic() - started)


@dataclass(frozen=True, slots=True)
class FloodResult:
    idle_connections: int
    open_after: int  # idle connections still open when the normal requests were answered
    models: Answer
    chat: Answer

    def __str__(self) -> str:
        return (
            f"{self.idle_connections} header-only connections ({self.open_after} still open): "
            f"GET /v1/models {self.models.label} in {self.models.at:.2f} s, "
            f"chat {self.chat.label} in {self.chat.at:.2f} s"
        )


async def idle_flood(box: OneBox, connections: int = 1030) -> FloodResult:
    """``connections`` clients that send a POST's headers and never its body; then normal traffic."""
    model = box.topology.served_names[0]
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
        b"content-length: 1000\r\n\r\n"
    )
    writers: list[asyncio.StreamWriter] = []
    try:
        for _ in range(connections):
            _, writer = await asyncio.open_connection("127.0.0.1", box.gateway_port)
            writer.write(head)
            writers.append(writer)
        await asyncio.gather(*(w.drain() for w in writers))
        await asyncio.sleep(0.5)  # let Envoy take every one of them to the BBR or EPP
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            started = time.monotonic()
            async with session.get(f"{box.gateway_url}/v1/models") as response:
                models = await _classify(response, started)
            started = time.monotonic()
            answer = await _post(session, box.gateway_url, model, started)
        still_open = sum(1 for w in writers if not w.is_closing() and not w.transport.is_closing())
    finally:
        for writer in writers:
            writer.close()
    return FloodResult(connections, still_open, models, answer)


@dataclass(frozen=True, slots=True)
class RecoveryResult:
    child: str
    answers: list[Answer] = field(repr=False)
    restarts: int
    recovered_after: float | None  # seconds from the kill to the first success after the last failure

    @property
    def failures(self) -> list[Answer]:
        return [a for a in self.answers if a.status != 200]

    def __str__(self) -> str:
        recovery = "never" if self.recovered_after is None else f"{self.recovered_after:.2f} s"
        return (
            f"kill -9 {self.child}: {len(self.answers)} requests, failures {tally(self.failures)}; "
            f"restarted {self.restarts}x, serving again {recovery} after the kill"
        )


async def kill_and_recover(
    box: OneBox, name: str, models: list[str] | None = None, clients: int = 4, within: float = 30.0
) -> RecoveryResult:
    """``kill -9`` child ``name`` while ``clients`` loops send chat requests; until served again."""
    targets = models or box.topology.served_names
    child = box.child(name)
    restarts_before = child.restarts
    answers: list[Answer] = []
    stop = asyncio.Event()
    killed_at = 0.0

    async def traffic(index: int) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
            i = index
            while not stop.is_set():
                answers.append(await _post(session, box.gateway_url, targets[i % len(targets)], killed_at))
                i += 1
                await asyncio.sleep(0.01)

    killed_at = time.monotonic()
    tasks = [asyncio.create_task(traffic(i)) for i in range(clients)]
    try:
        await asyncio.sleep(0.3)  # traffic flowing
        killed_at = time.monotonic()
        os.kill(child.pid, signal.SIGKILL)
        deadline = killed_at + within
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            recent = [a for a in answers if a.at > 0]
            restarted = child.restarts > restarts_before and child.running
            if restarted and len(recent) >= 20 and all(a.status == 200 for a in recent[-20:]):
                break
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    after_kill = [a for a in answers if a.at >= 0]
    failures = [a for a in after_kill if a.status != 200]
    recovered: float | None = None
    if after_kill and after_kill[-1].status == 200:
        last_failure = max((a.at for a in failures), default=0.0)
        recovered = min((a.at for a in after_kill if a.status == 200 and a.at >= last_failure), default=None)
    return RecoveryResult(name, after_kill, child.restarts - restarts_before, recovered)


@dataclass(frozen=True, slots=True)
class StoppedPodResult:
    pod: str
    stuck: Answer  # the request sent to the stopped pod
    other: Answer | None  # a request to another model meanwhile

    def __str__(self) -> str:
        other = "" if self.other is None else f"; another model meanwhile: {self.other.label}"
        return f"kill -STOP {self.pod}: its request got {self.stuck.label} after {self.stuck.at:.1f} s{other}"


@contextlib.asynccontextmanager
async def stopped(pid: int) -> AsyncIterator[None]:
    """The process stopped (``SIGSTOP``) for the block, continued after it."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def stopped_pod(box: OneBox, pod_name: str) -> StoppedPodResult:
    """A request to a ``kill -STOP``-ed pod's model, and one to another model, while it is stopped."""
    pod = next(p for p in box.pods if p.name == pod_name)
    if pod.pid is None:
        raise ValueError(f"{pod_name} is a bring-your-own server: the box cannot stop it")
    others = [m for m in box.topology.served_names if m != pod.model]
    async with stopped(pod.pid), aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        started = time.monotonic()
        stuck_request = asyncio.ensure_future(_post(session, box.gateway_url, pod.model, started))
        other = await _post(session, box.gateway_url, others[0], time.monotonic()) if others else None
        stuck = await stuck_request
    return StoppedPodResult(pod_name, stuck, other)


def resident_kib(pid: int) -> int:
    """The process's resident set size (``VmRSS``), in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise ValueError(f"process {pid} reports no VmRSS")


@dataclass(frozen=True, slots=True)
class SoakResult:
    requests: int
    concurrency: int
    seconds: float
    answers: dict[str, int]
    before_kib: dict[str, int]  # resident memory of every child after the warm-up
    after_kib: dict[str, int]

    def growth_kib(self) -> dict[str, int]:
        return {name: self.after_kib[name] - before for name, before in self.before_kib.items()}

    def __str__(self) -> str:
        rows = ", ".join(
            f"{name} {self.before_kib[name] / 1024:.1f}->{self.after_kib[name] / 1024:.1f} MiB "
            f"({growth:+d} KiB, {growth * 1024 / self.requests:+.0f} B/request)"
            for name, growth in self.growth_kib().items()
        )
        rate = self.requests / self.seconds
        return (
            f"soak: {self.requests} requests at concurrency {self.concurrency} in {self.seconds:.1f} s "
            f"({rate:.0f}/s), answers {self.answers}; resident memory after warm-up -> after: {rows}"
        )


async def _load(box: OneBox, requests: int, concurrency: int) -> list[Answer]:
    models = box.topology.served_names
    answers: list[Answer] = []
    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        counter = iter(range(requests))

        async def client() -> None:
            for i in counter:
                answers.append(await _post(session, box.gateway_url, models[i % len(models)], started))

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return answers


async def soak(box: OneBox, requests: int = 20_000, concurrency: int = 32, warmup: int = 4_000) -> SoakResult:
    """``warmup`` requests, every child's resident memory, ``requests`` more, the memory again."""
    await _load(box, warmup, concurrency)
    await asyncio.sleep(0.5)  # let in-flight bookkeeping settle
    before = {child.name: resident_kib(child.pid) for child in box.children}
    started = time.monotonic()
    answers = await _load(box, requests, concurrency)
    seconds = time.monotonic() - started
    await asyncio.sleep(0.5)
    after = {child.name: resident_kib(child.pid) for child in box.children}
    return SoakResult(requests, concurrency, seconds, tally(answers), before, after)


async def open_loop(
    box: OneBox, rate: float, seconds: float, at: Callable[[], Awaitable[None]], fault_after: float = 0.5
) -> list[Answer]:
    """Chat requests at ``rate`` per second for ``seconds`` (each sent on time, whatever the others
    do, as independent clients would); ``at()`` runs ``fault_after`` s in, the reference moment of
    every answer's ``sent`` and ``at`` (negative before it)."""
    model = box.topology.served_names[0]
    connector = aiohttp.TCPConnector(limit=0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    reference = time.monotonic() + fault_after
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        fault = asyncio.ensure_future(_at(loop, started + fault_after, at))
        requests: list[asyncio.Task[Answer]] = []
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, started + i / rate - loop.time()))
            requests.append(asyncio.ensure_future(_post(session, box.gateway_url, model, reference)))
        answers = await asyncio.gather(*requests)
        await fault
    return list(answers)


async def _at(loop: asyncio.AbstractEventLoop, when: float, action: Callable[[], Awaitable[None]]) -> None:
    await asyncio.sleep(max(0.0, when - loop.time()))
    await action()


@dataclass(frozen=True, slots=True)
class PodFaultResult:
    """Requests sent at a steady rate while one pod of a pool was killed or stopped at t = 0."""

    fault: str
    pod: str
    answers: list[Answer] = field(repr=False)
    settle: float  # seconds after the fault from which requests are judged
    resumed_at: float = float("inf")  # when a stopped pod was continued

    @property
    def after(self) -> list[Answer]:
        """Requests sent ``settle`` s or more after the fault."""
        return [a for a in self.answers if a.sent >= self.settle]

    @property
    def failed_after(self) -> list[Answer]:
        return [a for a in self.after if a.status != 200]

    @property
    def failure_ratio(self) -> float:
        return len(self.failed_after) / max(1, len(self.after))

    @property
    def last_sent_to_pod(self) -> float | None:
        """When (after the fault) the last request was sent that the faulty pod got or should have:
        served by it, refused on the way to it (502) or stuck on it (504)."""
        hit = [
            a.sent for a in self.answers
            if 0 <= a.sent < self.resumed_at and (a.pod == self.pod or a.status in (502, 504))
        ]
        return max(hit, default=None)

    @property
    def served_again(self) -> float | None:
        """When the pod answered a request sent after it was continued, if it did."""
        return min((a.sent for a in self.answers if a.sent >= self.resumed_at and a.pod == self.pod),
                   default=None)

    def __str__(self) -> str:
        during = [a for a in self.answers if 0 <= a.sent < self.settle]
        last = self.last_sent_to_pod
        last_text = "never" if last is None else f"{last:.2f} s"
        return (
            f"{self.fault} {self.pod} (1 of {self.pods} pods) at t=0: {len(self.answers)} requests; "
            f"sent in the first {self.settle:g} s: {tally(during)}; sent from {self.settle:g} s on: "
            f"{len(self.after)}, failed {len(self.failed_after)} ({self.failure_ratio:.2%}) "
            f"{tally(self.failed_after)}; last request to {self.pod} sent at {last_text}"
            + ("" if self.resumed_at == float("inf") else
               f"; continued at {self.resumed_at:.1f} s, serving again from "
               + ("never" if self.served_again is None else f"{self.served_again:.2f} s"))
        )

    @property
    def pods(self) -> int:
        return len({a.pod for a in self.answers if a.pod} | {self.pod})


def _pod_pid(box: OneBox, pod_name: str) -> int:
    pod = next(p for p in box.pods if p.name == pod_name)
    if pod.pid is None:
        raise ValueError(f"{pod_name} is not a process of this box (a server of your own)")
    return pod.pid


async def killed_pod(
    box: OneBox, pod_name: str, rate: float = 100.0, seconds: float = 8.0, settle: float = 2.0
) -> PodFaultResult:
    """``kill -9`` of one pod under a steady load. Run it on a box whose restart backoff keeps the
    pod dead for the run (as the issue's "left dead")."""
    pid = _pod_pid(box, pod_name)

    async def kill() -> None:
        os.kill(pid, signal.SIGKILL)

    answers = await open_loop(box, rate, seconds, kill)
    return PodFaultResult("kill -9", pod_name, answers, settle)


async def stopped_pod_under_load(
    box: OneBox, pod_name: str, rate: float = 100.0, seconds: float = 6.0, settle: float = 2.0
) -> PodFaultResult:
    """``kill -STOP`` of one pod under a steady load, ``kill -CONT`` ``seconds - 1.5`` s later; the
    3 s of load after that show whether the pod is back in rotation."""
    pid = _pod_pid(box, pod_name)
    resumed_at = seconds - 1.5

    async def stop_then_continue() -> None:
        os.kill(pid, signal.SIGSTOP)
        await asyncio.sleep(resumed_at)
        os.kill(pid, signal.SIGCONT)

    answers = await open_loop(box, rate, seconds + 2.0, stop_then_continue)
    return PodFaultResult("kill -STOP", pod_name, answers, settle, resumed_at)


async def health(box: OneBox) -> Answer:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        started = time.monotonic()
        async with session.get(f"{box.gateway_url}/health") as response:
            return await _classify(response, started)


async def _main(args: argparse.Namespace) -> None:
    timeouts = GatewayTimeouts(upstream_idle=args.upstream_idle_timeout)
    started = time.monotonic()
    async with OneBox(load_preset("gpu"), time_scale=0, timeouts=timeouts) as box:
        print(f"gpu box up in {time.monotonic() - started:.1f} s at {box.gateway_url}")
        print(f"GET /health: {(await health(box)).label}")
        print(await burst(box, args.burst))
        print(await idle_flood(box, args.idle))
        for name in ("epp-gemma", "bbr"):
            print(await kill_and_recover(box, name))
        print(await stopped_pod(box, "phi3-0"))
    # A killed pod stays dead for the run (as a crash-looping pod would), not restarted.
    restart = Backoff(first=120.0, longest=120.0)
    async with OneBox(load_preset("scaleout"), time_scale=0, timeouts=timeouts, restart=restart) as box:
        print(f"scaleout box up at {box.gateway_url}")
        print(await stopped_pod_under_load(box, "gemma-1", rate=args.rate))
        print(await killed_pod(box, "gemma-2", rate=args.rate))
    async with OneBox(load_preset("gpu"), time_scale=0) as box:
        print(await soak(box, args.soak))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m onebox.faults", description=__doc__.split("\n")[0])
    parser.add_argument("--burst", type=int, default=1500, help="requests sent at once")
    parser.add_argument("--idle", type=int, default=1030, help="header-only connections")
    parser.add_argument("--upstream-idle-timeout", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=100.0, help="requests/s while a pod fails")
    parser.add_argument("--soak", type=int, default=20_000, help="requests of the memory soak")
    args = parser.parse_args(argv)
    asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# -- a key holder holding request bodies (issue 20) --------------------------------------------------
@dataclass(frozen=True, slots=True)
class HeldBodiesResult:
    attackers: int
    body_bytes: int
    budget: int
    refused: dict[str, int]  # what the attackers got before closing: status -> count ("held": nothing)
    bbr_before_kib: int
    bbr_peak_kib: int  # the BBR's largest resident memory while the bodies were held
    bbr_after_kib: int  # a few seconds after the attackers closed
    light_alone_ms: float  # the other tenant's p50, unloaded
    light_loaded_ms: float  # ... while the bodies were held
    light_answers: dict[str, int]

    @property
    def growth_kib(self) -> int:
        return self.bbr_peak_kib - self.bbr_before_kib

    def __str__(self) -> str:
        return (
            f"held bodies: {self.attackers} x {self.body_bytes / 1e6:.0f} MB withheld 2 bytes short, "
            f"budget {self.budget / 2**20:.0f} MiB; attackers got {self.refused}; BBR resident "
            f"{self.bbr_before_kib / 1024:.0f} -> peak {self.bbr_peak_kib / 1024:.0f} -> after "
            f"{self.bbr_after_kib / 1024:.0f} MiB (growth {self.growth_kib / 1024:+.0f} MiB); "
            f"other tenant p50 "
            f"{self.light_alone_ms:.1f} ms alone, {self.light_loaded_ms:.1f} ms under the attack "
            f"({self.light_loaded_ms / self.light_alone_ms:.2f}x), answers {self.light_answers}"
        )


async def _hold_body(
    host: str, port: int, key: str, model: str, size: int
) -> tuple[str, asyncio.StreamWriter]:
    """POST a ``size``-byte chat body naming ``model`` at its end, all but its last 2 bytes; what came
    back before the sending stopped (a status, or "held")."""
    head = b'{"messages": [{"role": "user", "content": "'
    tail = f'"}}], "model": "{model}"}}'.encode()
    filler = size - len(head) - len(tail)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {key}\r\ncontent-length: {size}\r\n\r\n".encode()
    )
    chunk = b"x" * 65536
    try:
        writer.write(head)
        sent = 0
        while sent < filler:
            piece = chunk[: min(len(chunk), filler - sent)]
            writer.write(piece)
            sent += len(piece)
            await writer.drain()
        writer.write(tail[:-2])
        await writer.drain()
    except (ConnectionError, OSError):
        pass
    try:
        line = await asyncio.wait_for(reader.readline(), 0.5)
    except (TimeoutError, ConnectionError, OSError):
        return "held", writer
    parts = line.split()
    return (parts[1].decode() if len(parts) > 1 else "closed"), writer


async def _light_p50(box: OneBox, key: str, model: str, requests: int) -> tuple[float, dict[str, int]]:
    answers: list[Answer] = []
    headers = {"authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30), headers=headers) as session:
        for _ in range(requests):
            answers.append(await _post(session, box.gateway_url, model, time.monotonic()))
    latencies = sorted(a.at - a.sent for a in answers)
    return latencies[len(latencies) // 2] * 1000, tally(answers)


async def held_bodies(
    box: OneBox, attacker_key: str, forbidden_model: str, light_key: str, light_model: str, *,
    attackers: int = 40, body_bytes: int = 15_000_000, light_requests: int = 30,
) -> HeldBodiesResult:
    """A key holder opens ``attackers`` requests of ``body_bytes`` for a model its key may not use,
    naming it at the body's end and withholding the last 2 bytes, and holds them; meanwhile another
    tenant's requests are timed, and the BBR's resident memory followed."""
    assert box.bbr_buffered_bytes is not None, "give the box a BBR body budget"
    bbr = box.bbrs[0].child
    host, port = box.gateway_url.removeprefix("http://").rsplit(":", 1)
    light_alone, _ = await _light_p50(box, light_key, light_model, light_requests)
    before = resident_kib(bbr.pid)
    peak = before
    sampling = True

    async def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, resident_kib(bbr.pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.ensure_future(sample())
    held = await asyncio.gather(
        *(_hold_body(host, int(port), attacker_key, forbidden_model, body_bytes) for _ in range(attackers))
    )
    light_loaded, light_answers = await _light_p50(box, light_key, light_model, light_requests)
    sampling = False
    await sampler
    peak = max(peak, resident_kib(bbr.pid))
    for _, writer in held:
        writer.close()
    await asyncio.sleep(3.0)
    after = resident_kib(bbr.pid)
    refused = dict(Counter(status for status, _ in held))
    return HeldBodiesResult(attackers, body_bytes, box.bbr_buffered_bytes, refused, before, peak, after,
                            light_alone, light_loaded, light_answers)

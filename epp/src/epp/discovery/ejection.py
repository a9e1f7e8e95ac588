"""Outlier ejection: an endpoint that refuses connections or fails its scrapes leaves rotation.

Two kinds of evidence, one state per endpoint address:

- active: the metrics scraper's result for every scrape (each bounded by the scrape timeout).
  ``consecutive_failures`` failed scrapes in a row (refused, reset, timed out, not vLLM metrics)
  eject the endpoint, whatever its load score. A refused connection fails a scrape at once, so a
  dead pod is out after about ``consecutive_failures`` x the scrape interval; a hung (stopped) pod
  after about ``consecutive_failures`` x the scrape timeout. Scrapes that all *timed out* do not
  eject a pod that sent a byte of a routed request's answer since the first of them (its own answer,
  not the gateway's, and not a server error): its server is up and serving, only slow to send its
  metrics (a vLLM short of CPU), so it stays in rotation on stale metrics, and the count starts
  over. A hung pod sends nothing and is out as before.
- passive: a routed request whose response says the proxy could not connect to the endpoint
  (``epp.contract.UPSTREAM_FAILURE_HEADER: connect``, which the gateway's local reply adds on a
  connect failure). ``consecutive_connect_failures`` of them in a row eject it; any other answer from the
  endpoint resets the count.

An ejected endpoint stays out for at least its ejection time: ``base_ejection`` seconds, doubled for
each ejection that follows the last one within ``max_ejection`` seconds of being readmitted (a
flapping endpoint stays out longer), at most ``max_ejection``. It comes back with the first
successful scrape after that time: it must answer again, not merely wait its time out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

from epp.datastore import Datastore, DatastoreEvent, Endpoint, EndpointRemoved

log = logging.getLogger(__name__)


class EjectionPolicy(BaseModel):
    """When an endpoint leaves rotation and when it may come back."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    consecutive_failures: int = Field(
        default=3, ge=1, description="failed metrics scrapes in a row that eject an endpoint"
    )
    consecutive_connect_failures: int = Field(
        default=2, ge=1, description="routed requests in a row whose connection was refused that eject it"
    )
    base_ejection: float = Field(default=1.0, gt=0, description="seconds out of rotation, at least")
    max_ejection: float = Field(default=30.0, gt=0, description="seconds out of rotation, at most")

    @model_validator(mode="after")
    def _ordered(self) -> EjectionPolicy:
        if self.base_ejection > self.max_ejection:
            raise ValueError("base_ejection must not exceed max_ejection")
        return self


@dataclass(slots=True)
class _State:
    scrape_failures: int = 0
    connect_failures: int = 0
    # Ejections in a row (each within max_ejection of the previous readmission): the backoff.
    ejections: int = 0
    ejected_until: float = 0.0
    readmitted_at: float = float("-inf")
    # When the scrape failures in a row began, whether every one of them timed out, whether this run
    # has been excused (logged once), and when the endpoint last sent a routed request's answer
    # (recorded only while a state is kept: a healthy endpoint costs its requests nothing here).
    failing_since: float = 0.0
    only_timeouts: bool = True
    excused: bool = False
    answered_at: float = float("-inf")


class Ejector:
    """Ejects and readmits the datastore's endpoints from scrape results and connect failures.

    ``ejections`` counts ejections so far; ``on_eject(reason)`` (optional) is called with
    ``"scrape"`` or ``"connect"`` for each one, e.g. to count it in a Prometheus counter.
    """

    def __init__(
        self,
        datastore: Datastore,
        policy: EjectionPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_eject: Callable[[str], None] | None = None,
    ) -> None:
        self._datastore = datastore
        self.policy = policy or EjectionPolicy()
        self._clock = clock
        self._on_eject = on_eject
        self._states: dict[str, _State] = {}
        self.ejections = 0
        datastore.subscribe(self._on_change)

    def _on_change(self, event: DatastoreEvent) -> None:
        if isinstance(event, EndpointRemoved):
            self._states.pop(event.endpoint.address, None)

    def _state(self, address: str) -> _State:
        state = self._states.get(address)
        if state is None:
            state = self._states[address] = _State()
        return state

    # -- active: the scraper -------------------------------------------------------------------
    def scrape_failed(self, endpoint: Endpoint, why: str, *, timed_out: bool = False) -> None:
        """A scrape of ``endpoint`` failed; ``timed_out``: it got no answer in time (rather than a
        refused or reset connection, or an answer that is not vLLM's metrics)."""
        state = self._state(endpoint.address)
        if state.scrape_failures == 0:
            state.failing_since = self._clock()
            state.only_timeouts = True
        state.scrape_failures += 1
        state.only_timeouts &= timed_out
        if endpoint.ejected or state.scrape_failures < self.policy.consecutive_failures:
            return
        if state.only_timeouts and state.answered_at >= state.failing_since:
            # Slow to send its metrics, not gone: it sent an answer since these scrapes began to fail.
            if not state.excused:
                state.excused = True
                log.warning(
                    "endpoint %s (%s): its metrics scrapes time out, but it answers its requests; kept in "
                    "rotation on its last metrics", endpoint.address, endpoint.name,
                )  # fmt: skip
            state.scrape_failures = 0
            return
        self._eject(endpoint, state, "scrape", f"{state.scrape_failures} failed scrapes in a row ({why})")

    def scrape_succeeded(self, endpoint: Endpoint) -> None:
        state = self._states.get(endpoint.address)
        if state is None:
            return
        state.scrape_failures = 0
        if state.excused:
            state.excused = False
            log.info("endpoint %s (%s): its metrics scrapes answer again", endpoint.address, endpoint.name)
        now = self._clock()
        if endpoint.ejected and now >= state.ejected_until:
            state.connect_failures = 0
            state.readmitted_at = now
            if self._datastore.set_ejected(endpoint, False):
                log.warning(
                    "endpoint %s (%s) answers again; back in rotation", endpoint.address, endpoint.name
                )
        elif not endpoint.ejected and state.connect_failures == 0 and state.ejections == 0:
            del self._states[endpoint.address]  # nothing to remember about a healthy endpoint

    # -- passive: what routed requests met ----------------------------------------------------------
    def connect_failed(self, address: str) -> None:
        """The proxy could not connect to ``address`` for a request routed there."""
        endpoint = self._datastore.get(address)
        if endpoint is None or endpoint.ejected:
            return
        state = self._state(address)
        state.connect_failures += 1
        if state.connect_failures >= self.policy.consecutive_connect_failures:
            self._eject(endpoint, state, "connect", f"{state.connect_failures} refused connections in a row")

    def answered(self, address: str, alive_at: float | None = None) -> None:
        """A request routed to ``address`` reached it (its connection was not refused). ``alive_at``:
        when the endpoint itself last sent a byte of the answer (the clock's time), where the answer
        shows it alive: its own, not the gateway's, and not a server error; None where it does not."""
        state = self._states.get(address)
        if state is not None:
            state.connect_failures = 0
            if alive_at is not None and alive_at > state.answered_at:
                state.answered_at = alive_at

    # -------------------------------------------------------------------------------------------
    def _eject(self, endpoint: Endpoint, state: _State, reason: str, why: str) -> None:
        now = self._clock()
        policy = self.policy
        if now - state.readmitted_at > policy.max_ejection:
            state.ejections = 0  # healthy long enough: the backoff starts over
        state.ejections += 1
        seconds = min(policy.max_ejection, policy.base_ejection * 2 ** (state.ejections - 1))
        state.ejected_until = now + seconds
        state.connect_failures = 0
        if not self._datastore.set_ejected(endpoint, True):
            return
        self.ejections += 1
        if self._on_eject is not None:
            self._on_eject(reason)
        log.warning(
            "endpoint %s (%s) out of rotation for at least %g s: %s",
            endpoint.address, endpoint.name, seconds, why,
        )

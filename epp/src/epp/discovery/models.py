"""Which models each endpoint serves, asked of the endpoint itself (``GET http://ip:port/v1/models``).

An endpoint is probed as soon as it appears, then every ``interval`` seconds, and at once when the
request path reports that it answered model-not-found (:meth:`ModelProber.request_refresh`).
Until its first successful answer it stays unroutable, and it is retried quickly (backing off up to
``interval``) so a pod that is still starting becomes routable soon after it can answer. A failed
probe of a known endpoint keeps its last known models.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp

from epp.datastore import Datastore, Endpoint
from epp.discovery._workers import POLL_ERRORS, EndpointPoller, ErrorCallback

log = logging.getLogger(__name__)


class ModelListError(ValueError):
    """An answer from ``/v1/models`` that is not an OpenAI-style model list."""


def parse_model_list(body: Any) -> tuple[frozenset[str], dict[str, str]]:
    """Model ids and LoRA adapter -> base model from an OpenAI/vLLM ``/v1/models`` answer."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise ModelListError("expected a JSON object with a 'data' list")
    models: set[str] = set()
    parents: dict[str, str] = {}
    for index, entry in enumerate(body["data"]):
        if not isinstance(entry, dict):
            raise ModelListError(f"data[{index}] is not an object")
        model_id = entry.get("id")
        if not isinstance(model_id, str) or not model_id:
            raise ModelListError(f"data[{index}] field 'id' must be a non-empty string")
        models.add(model_id)
        parent = entry.get("parent")
        if parent is not None:
            if not isinstance(parent, str) or not parent:
                raise ModelListError(f"data[{index}] ({model_id}) field 'parent' must be a string or null")
            if parent != model_id:
                parents[model_id] = parent
    return frozenset(models), parents


class ModelProber(EndpointPoller):
    """Keeps ``Endpoint.models`` / ``lora_parents`` of every endpoint in the datastore current."""

    name = "models"

    def __init__(
        self,
        datastore: Datastore,
        session: aiohttp.ClientSession,
        interval: float = 10.0,
        timeout: float = 2.0,
        *,
        first_retry: float = 0.2,
        on_error: ErrorCallback | None = None,
    ) -> None:
        if interval <= 0 or timeout <= 0 or first_retry <= 0:
            raise ValueError("interval, timeout and first_retry must be positive")
        super().__init__(datastore, session, interval, timeout, on_error, "model-prober")
        self._first_retry = min(first_retry, interval)
        self._refresh: dict[str, asyncio.Event] = {}
        self.probes = 0

    def request_refresh(self, address: str) -> bool:
        """Ask the endpoint ``ip:port`` for its models again now (coalesced with any probe under way).

        Returns False when the prober does not follow that address.
        """
        event = self._refresh.get(address)
        if event is None:
            return False
        event.set()
        return True

    async def probe(self, endpoint: Endpoint) -> bool:
        """One ``/v1/models`` round trip; on success store the models. True when it succeeded."""
        self.probes += 1
        try:
            body = await self._get(endpoint, "/v1/models", _read_json, ModelListError)
            models, parents = parse_model_list(body)
        except POLL_ERRORS as exc:
            self._count_error()
            known = "keeping its last known models" if endpoint.models_known else "it stays unroutable"
            log.warning(
                "model probe of %s (%s) failed: %s; %s",
                endpoint.address,
                endpoint.name,
                str(exc) or type(exc).__name__,
                known,
            )
            return False
        except Exception:
            self._unexpected(endpoint, "model probe")
            return False
        if self._datastore.get(endpoint.address) is not endpoint:
            return False  # removed (or replaced) while the probe was in flight
        if models != endpoint.models or not endpoint.models_known:
            log.info("endpoint %s (%s) serves %s", endpoint.address, endpoint.name, sorted(models))
        self._datastore.set_models(endpoint.address, models, parents)
        return True

    async def _follow(self, endpoint: Endpoint) -> None:
        address = endpoint.address
        refresh = asyncio.Event()
        self._refresh[address] = refresh
        retry = self._first_retry
        try:
            while True:
                refresh.clear()
                ok = await self.probe(endpoint)
                if ok or endpoint.models_known:
                    wait = self._interval
                else:
                    wait = retry
                    retry = min(retry * 2, self._interval)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(refresh.wait(), wait)
        finally:
            if self._refresh.get(address) is refresh:
                del self._refresh[address]
            self._forget(endpoint)


async def _read_json(response: aiohttp.ClientResponse) -> Any:
    return await response.json(content_type=None)

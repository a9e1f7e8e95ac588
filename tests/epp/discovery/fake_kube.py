"""A small fake Kubernetes API server (aiohttp, 127.0.0.1) for the discovery tests.

It serves what the EPP's discovery uses: GET of one InferencePool, LIST of Pods by label selector,
and WATCH streams (JSON lines ``{"type": ..., "object": ...}``) of both, resumable from a
``resourceVersion`` like the real API server. Tests change pods and the pool through its methods
and can expire every open watch (an ``ERROR`` event with ``410 Gone``).
"""

from __future__ import annotations

import asyncio
import copy
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

POOL_PATH = "/apis/inference.networking.k8s.io/v1/namespaces/{namespace}/inferencepools"
PODS_PATH = "/api/v1/namespaces/{namespace}/pods"


@dataclass
class Event:
    version: int
    kind: str  # "pods" or "pools"
    type: str
    object: dict[str, Any]


def pod(
    name: str,
    ip: str | None = "10.0.0.1",
    *,
    ready: bool = True,
    labels: dict[str, str] | None = None,
    terminating: bool = False,
) -> dict[str, Any]:
    """A Pod object as the API server returns it (only the fields discovery reads, plus a few)."""
    metadata: dict[str, Any] = {"name": name, "labels": labels if labels is not None else {"app": "vllm"}}
    if terminating:
        metadata["deletionTimestamp"] = "2026-11-24T14:00:00Z"
        metadata["deletionGracePeriodSeconds"] = 30
    status: dict[str, Any] = {
        "phase": "Running" if ip else "Pending",
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "True" if ready else "False"},
        ],
    }
    if ip:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai"}]},
        "status": status,
    }


def pool(name: str, match_labels: dict[str, str], ports: list[int]) -> dict[str, Any]:
    return {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": match_labels},
            "targetPorts": [{"number": port} for port in ports],
            "endpointPickerRef": {"name": f"{name}-epp", "port": {"number": 9002}},
        },
    }


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


class FakeKube:
    """State plus the aiohttp app serving it for one namespace."""

    def __init__(self, namespace: str = "llm") -> None:
        self.namespace = namespace
        self.version = 1
        self.pools: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        self.log: list[Event] = []
        self.requests: list[str] = []  # "METHOD path?query" of every request, for assertions
        self._streams: set[int] = set()  # ids of the open watch streams
        self._expired: set[int] = set()  # ... of those told to end with 410 Gone
        self._next_stream = 0
        self._changed = asyncio.Event()

    # --- changes the tests make ---------------------------------------------------------------
    def _record(self, kind: str, type_: str, obj: dict[str, Any]) -> None:
        self.version += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["namespace"] = self.namespace
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.log.append(Event(self.version, kind, type_, obj))
        self._changed.set()
        self._changed = asyncio.Event()

    def put_pool(self, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        type_ = "MODIFIED" if name in self.pools else "ADDED"
        self.pools[name] = obj
        self._record("pools", type_, obj)

    def delete_pool(self, name: str) -> None:
        self._record("pools", "DELETED", self.pools.pop(name))

    def put_pod(self, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        type_ = "MODIFIED" if name in self.pods else "ADDED"
        self.pods[name] = obj
        self._record("pods", type_, obj)

    def delete_pod(self, name: str) -> None:
        self._record("pods", "DELETED", self.pods.pop(name))

    def expire_watches(self) -> None:
        """End every open watch with an ERROR 410 Gone event (resourceVersion too old)."""
        self._expired |= self._streams
        self._changed.set()
        self._changed = asyncio.Event()

    @property
    def open_watches(self) -> int:
        return len(self._streams)

    # --- the API --------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        pools = POOL_PATH.format(namespace=self.namespace)
        pods = PODS_PATH.format(namespace=self.namespace)
        app.router.add_get(pools + "/{name}", self._get_pool)
        app.router.add_get(pools, self._list_or_watch_pools)
        app.router.add_get(pods, self._list_or_watch_pods)
        return app

    def _stored(self, obj: dict[str, Any]) -> dict[str, Any]:
        for event in reversed(self.log):
            if event.object["metadata"]["name"] == obj["metadata"]["name"] and event.type != "DELETED":
                return event.object
        raise AssertionError("object was never recorded")

    async def _get_pool(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(f"GET {request.path_qs}")
        name = request.match_info["name"]
        if name not in self.pools:
            return _status(404, "NotFound", f'inferencepools.inference.networking.k8s.io "{name}" not found')
        return web.json_response(self._stored(self.pools[name]))

    async def _list_or_watch_pools(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(f"GET {request.path_qs}")
        field = request.query.get("fieldSelector", "")
        name = field.removeprefix("metadata.name=") if field.startswith("metadata.name=") else None

        def wanted(obj: dict[str, Any]) -> bool:
            return name is None or obj["metadata"]["name"] == name

        if request.query.get("watch") == "true":
            return await self._watch(request, "pools", wanted)
        return _status(405, "MethodNotAllowed", "the fake only watches pools")

    async def _list_or_watch_pods(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(f"GET {request.path_qs}")
        selector = request.query.get("labelSelector", "")

        def wanted(obj: dict[str, Any]) -> bool:
            return _matches(obj["metadata"].get("labels", {}), selector)

        if request.query.get("watch") == "true":
            return await self._watch(request, "pods", wanted)
        items = [self._stored(p) for p in self.pods.values() if wanted(p)]
        return web.json_response(
            {
                "apiVersion": "v1",
                "kind": "PodList",
                "metadata": {"resourceVersion": str(self.version)},
                "items": items,
            }
        )

    async def _watch(self, request: web.Request, kind: str, wanted: Any) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or self.version)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        self._next_stream += 1
        stream_id = self._next_stream
        self._streams.add(stream_id)
        try:
            position = next((i for i, e in enumerate(self.log) if e.version > since), len(self.log))
            while stream_id not in self._expired:
                changed = self._changed  # taken first, so a change during the writes is not missed
                while position < len(self.log):
                    event = self.log[position]
                    position += 1
                    if event.kind == kind and wanted(event.object):
                        line = {"type": event.type, "object": event.object}
                        await response.write(json.dumps(line).encode() + b"\n")
                await changed.wait()
            # Expired: what happened since is only seen by listing again.
            gone = {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "message": "too old resource version",
                "reason": "Expired",
                "code": 410,
            }
            await response.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
        finally:
            self._streams.discard(stream_id)
            self._expired.discard(stream_id)
        await response.write_eof()
        return response


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason}
    return web.json_response({**body, "code": code}, status=code)

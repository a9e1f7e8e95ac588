"""Static endpoints: a fixed ``--endpoints`` list, or a YAML file that is re-read when it changes.

The file form is how the local one box and the end-to-end tests add and remove "pods" mid-run::

    endpoints:
      - {name: gemma-0, address: 127.0.0.1, port: 8001, labels: {app: gemma}}
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from epp.contract import join_host_port, split_host_port
from epp.datastore import Datastore, Endpoint
from epp.discovery._workers import ErrorCallback
from epp.validation import field_path, problems

log = logging.getLogger(__name__)


class EndpointsFileError(ValueError):
    """A static endpoint list (file or flag) that cannot be used; the message names the entry and field."""


class StaticEndpoint(BaseModel):
    """One statically configured model server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    address: str
    port: int = Field(ge=1, le=65535)
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("address")
    @classmethod
    def _must_be_an_ip(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"must be an IP address, got {value!r}") from None

    @property
    def endpoint_address(self) -> str:
        """``ip:port`` (``[ip]:port`` for IPv6), as the datastore keys the endpoint."""
        return join_host_port(self.address, self.port)

    def to_endpoint(self) -> Endpoint:
        return Endpoint(name=self.name, ip=self.address, port=self.port, labels=dict(self.labels))


class _EndpointsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoints: list[StaticEndpoint]


def _check_unique(endpoints: Sequence[StaticEndpoint], where: str) -> None:
    seen: dict[str, int] = {}
    for index, endpoint in enumerate(endpoints):
        first = seen.setdefault(endpoint.endpoint_address, index)
        if first != index:
            raise EndpointsFileError(
                f"{where}: endpoints[{index}] (name {endpoint.name!r}) field 'address'/'port': "
                f"{endpoint.endpoint_address} is already used by endpoints[{first}]"
            )


def parse_endpoints_yaml(text: str, source: str = "endpoints file") -> list[StaticEndpoint]:
    """Parse the static endpoints YAML; errors name the entry (index and name) and the field."""
    try:
        raw: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise EndpointsFileError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise EndpointsFileError(f"{source}: expected a mapping with an 'endpoints' list at the top")
    try:
        parsed = _EndpointsFile.model_validate(raw)
    except ValidationError as exc:
        raise EndpointsFileError(_describe(exc, raw, source)) from None
    _check_unique(parsed.endpoints, source)
    return parsed.endpoints


def _describe(exc: ValidationError, raw: dict[str, Any], source: str) -> str:
    found = []
    for problem in problems(exc):
        loc, message = problem.loc, problem.pydantic_message
        if len(loc) >= 2 and loc[0] == "endpoints" and isinstance(loc[1], int):
            index = loc[1]
            entry = raw["endpoints"][index]
            name = entry.get("name") if isinstance(entry, dict) else None
            who = f"endpoints[{index}]" + (f" (name {name!r})" if isinstance(name, str) else "")
            if len(loc) >= 3:
                found.append(f"{who} field {field_path(loc[2:])!r}: {message}")
            else:
                found.append(f"{who}: {message}")
        else:
            found.append(f"field {problem.path() or '(top level)'!r}: {message}")
    return f"{source}: " + "; ".join(found)


def parse_endpoint_list(spec: str) -> list[StaticEndpoint]:
    """Parse ``--endpoints IP:PORT[,IP:PORT...]`` (IPv6 as ``[::1]:8000``); each is named ``IP:PORT``."""
    endpoints: list[StaticEndpoint] = []
    for index, item in enumerate(part.strip() for part in spec.split(",")):
        where = f"--endpoints entry {index + 1} ({item!r})"
        if not item:
            raise EndpointsFileError(f"{where}: empty entry; expected IP:PORT")
        host, port = _split_entry(item, where)
        try:
            endpoint = StaticEndpoint(name=item, address=host, port=port)
        except ValidationError as exc:
            problem = problems(exc)[0]
            field, message = problem.path(), problem.pydantic_message
            raise EndpointsFileError(f"{where} field {field!r}: {message}") from None
        if any(e.endpoint_address == endpoint.endpoint_address for e in endpoints):
            raise EndpointsFileError(f"{where}: {endpoint.endpoint_address} is listed twice")
        endpoints.append(endpoint)
    return endpoints


def _split_entry(item: str, where: str) -> tuple[str, int]:
    """``split_host_port(item)``; when it fails, the error names the field at fault. A port out of
    range is returned as it is, for the endpoint's own validation to name it."""
    try:
        return split_host_port(item)
    except ValueError as exc:
        problem = str(exc)
    host, sep, port_text = item.rpartition(":")
    if not sep or not host:
        raise EndpointsFileError(f"{where}: expected IP:PORT")
    if not port_text.isdigit():
        raise EndpointsFileError(f"{where} field 'port': {port_text!r} is not a number")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise EndpointsFileError(f"{where} field 'address': {problem}")
    return host, int(port_text)


class StaticDiscovery:
    """Feeds a fixed list, or a YAML file watched by polling, into the datastore.

    With ``file``, the file is parsed in the constructor (a bad file fails fast with
    :class:`EndpointsFileError`) and then re-read every ``poll_interval`` seconds; when its content
    changes, new endpoints are upserted and vanished ones removed. A bad edit is logged and counted
    and the last good list stays in place.
    """

    name = "static"

    def __init__(
        self,
        datastore: Datastore,
        endpoints: Sequence[StaticEndpoint] | None = None,
        *,
        file: Path | None = None,
        poll_interval: float = 0.5,
        on_error: ErrorCallback | None = None,
    ) -> None:
        if (endpoints is None) == (file is None):
            raise ValueError("StaticDiscovery needs exactly one of endpoints= or file=")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval}")
        self._datastore = datastore
        self._file = file
        self._poll_interval = poll_interval
        self._on_error = on_error
        self.errors = 0
        self._last_error: str | None = None
        self._content: bytes | None = None
        if file is not None:
            self._content = self._read(file)
            self._wanted = parse_endpoints_yaml(self._content.decode(), str(file))
        else:
            assert endpoints is not None
            _check_unique(endpoints, "endpoints")
            self._wanted = list(endpoints)
        self._current: dict[str, StaticEndpoint] = {}

    @staticmethod
    def _read(file: Path) -> bytes:
        try:
            return file.read_bytes()
        except OSError as exc:
            raise EndpointsFileError(f"endpoints file {file}: cannot read: {exc.strerror or exc}") from None

    async def run(self) -> None:
        """Load the list, mark the datastore synced, then follow the file until cancelled."""
        self._apply(self._wanted)
        self._datastore.mark_synced()
        if self._file is None:
            await asyncio.Event().wait()
            return
        while True:
            await asyncio.sleep(self._poll_interval)
            await self._poll(self._file)

    async def _poll(self, file: Path) -> None:
        try:
            content = await asyncio.to_thread(self._read, file)
            if content == self._content:
                return
            wanted = parse_endpoints_yaml(content.decode(errors="replace"), str(file))
        except EndpointsFileError as exc:
            self._fail(str(exc))
            return
        self._content = content
        self._last_error = None
        self._apply(wanted)

    def _fail(self, message: str) -> None:
        self.errors += 1
        if self._on_error is not None:
            self._on_error(self.name)
        if message != self._last_error:
            log.error("%s; keeping the last good endpoint list", message)
            self._last_error = message

    def _apply(self, wanted: Sequence[StaticEndpoint]) -> None:
        wanted_by_address = {endpoint.endpoint_address: endpoint for endpoint in wanted}
        for address in [a for a in self._current if a not in wanted_by_address]:
            del self._current[address]
            self._datastore.remove(address)
            log.info("static endpoint %s removed", address)
        for address, endpoint in wanted_by_address.items():
            if self._current.get(address) == endpoint and self._datastore.get(address) is not None:
                continue
            self._current[address] = endpoint
            self._datastore.upsert(endpoint.to_endpoint())
            log.info("static endpoint %s (%s) added or updated", address, endpoint.name)

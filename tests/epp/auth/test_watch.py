"""The key file is re-read when it changes, including the symlink swap of a Kubernetes Secret volume."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import yaml
from epp.auth.keys import ApiKeyError, hash_key
from epp.auth.store import KeyStore
from epp.auth.watch import KeyFile

KEY_A = "sk-team-a-0123456789abcdefghijklmnop"
KEY_B = "sk-team-b-0123456789abcdefghijklmnop"
SERVED = ("google/gemma-2b-it", "microsoft/Phi-3-mini-4k-instruct")


def write_atomically(path: Path, entries: object) -> None:
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(yaml.safe_dump(entries))
    staging.replace(path)


class SecretVolume:
    """A Secret volume as the kubelet writes it: ``api-keys.yaml -> ..data/api-keys.yaml``,
    ``..data -> ..<version>``, and an update swaps ``..data`` atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions = 0
        self.path = root / "api-keys.yaml"

    def publish(self, entries: object) -> None:
        self.versions += 1
        version = self.root / f"..2024_01_01_00_00_0{self.versions}"
        version.mkdir()
        (version / "api-keys.yaml").write_text(yaml.safe_dump(entries))
        link = self.root / "..data_tmp"
        link.symlink_to(version.name)
        os.replace(link, self.root / "..data")
        if not self.path.is_symlink():
            self.path.symlink_to("..data/api-keys.yaml")


def knows(store: KeyStore, key: str) -> bool:
    return store.find(hash_key(key)) is not None


async def until(condition: Callable[[], bool], within: float) -> None:
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - the watcher task changes the store
            await asyncio.sleep(0.01)


@asynccontextmanager
async def watching(key_file: KeyFile) -> AsyncIterator[None]:
    task = asyncio.create_task(key_file.watch())
    try:
        yield
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


A = {"name": "team-a", "key": KEY_A}
B = {"name": "team-b", "key": KEY_B, "models": ["google/gemma-2b-it"]}


def test_the_file_is_read_at_once_and_checked_against_the_served_models(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    write_atomically(path, [A, B])
    store = KeyStore()
    KeyFile(path, store, served_models=SERVED)
    assert store.names == ["team-a", "team-b"]

    write_atomically(path, [A, {**B, "models": ["meta/llama"]}])
    with pytest.raises(ApiKeyError) as caught:
        KeyFile(path, KeyStore(), served_models=SERVED)
    assert caught.value.errors == (
        f"apiKeys[1].models[0]: 'meta/llama' is not served (served: {', '.join(SERVED)})",
    )


def test_a_missing_file_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        KeyFile(tmp_path / "nope.yaml", KeyStore())


def test_a_file_that_is_not_utf8_is_refused_without_quoting_it(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_bytes(b"- name: team-a\n  key: sk-\xff\xfe" + KEY_A.encode())
    with pytest.raises(ApiKeyError) as caught:
        KeyFile(path, KeyStore())
    assert caught.value.errors == ("apiKeys: the file is not UTF-8 text",)


async def test_a_revoked_key_is_refused_within_two_seconds_at_the_default_poll(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    write_atomically(path, [A, B])
    store = KeyStore()
    key_file = KeyFile(path, store)
    async with watching(key_file):
        write_atomically(path, [B])
        await until(lambda: not knows(store, KEY_A), within=2.0)
    assert knows(store, KEY_B)


async def test_a_secret_volume_update_is_picked_up_through_its_symlinks(tmp_path: Path) -> None:
    volume = SecretVolume(tmp_path)
    volume.publish([A])
    store = KeyStore()
    async with watching(KeyFile(volume.path, store, interval=0.02)):
        volume.publish([A, B])  # a key added
        await until(lambda: knows(store, KEY_B), within=5.0)
        volume.publish([B])  # a key revoked
        await until(lambda: not knows(store, KEY_A), within=5.0)


async def test_a_broken_update_keeps_the_last_good_list_and_never_logs_a_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.yaml"
    write_atomically(path, [A, B])
    store = KeyStore()
    results: list[bool] = []
    key_file = KeyFile(path, store, on_reload=results.append)
    caplog.set_level(logging.INFO, logger="epp.auth")

    # A duplicate key, a short key and a half-written YAML document: each is refused, A and B stay.
    write_atomically(path, [A, {"name": "team-c", "key": KEY_A}, {"name": "team-d", "key": "sk-short"}])
    assert not await key_file.reload()
    path.write_text(f"- name: team-a\n  key: {KEY_A}\n  models: [oops")
    assert not await key_file.reload()
    path.unlink()
    assert not await key_file.reload()
    assert store.names == ["team-a", "team-b"]

    write_atomically(path, [B])
    assert await key_file.reload()
    assert store.names == ["team-b"]
    assert results == [False, False, False, True]

    messages = [record.getMessage() + repr(record.__dict__) for record in caplog.records]
    assert any("apiKeys[1]: the same key as apiKeys[0]" in m for m in messages)
    assert any("apiKeys[2].key: is shorter than 32 characters" in m for m in messages)
    assert all(KEY_A not in m and KEY_B not in m and "sk-short" not in m for m in messages)


async def test_an_unchanged_file_is_not_read_again(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    write_atomically(path, [A])
    key_file = KeyFile(path, KeyStore())
    assert not key_file.changed()
    write_atomically(path, [A, B])
    assert key_file.changed()
    await key_file.reload()
    assert not key_file.changed()

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
from epp.auth.watch import KeyFile, KeyListStatus

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


def watched_pair(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> tuple[Path, KeyStore, list[KeyListStatus], KeyFile]:
    """A file listing A and B, loaded into a store; the statuses of its reloads; INFO logs captured."""
    path = tmp_path / "keys.yaml"
    write_atomically(path, [A, B])
    store = KeyStore()
    results: list[KeyListStatus] = []
    key_file = KeyFile(path, store, on_reload=results.append)
    caplog.set_level(logging.INFO, logger="epp.auth")
    return path, store, results, key_file


async def test_a_removal_takes_effect_even_when_the_same_edit_adds_a_bad_entry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, store, results, key_file = watched_pair(tmp_path, caplog)

    # team-a revoked; in the same edit a duplicate of B's key and a short key are added.
    write_atomically(path, [B, {"name": "team-c", "key": KEY_B}, {"name": "team-d", "key": "sk-short"}])
    assert not await key_file.reload()
    assert store.names == ["team-b"]  # the valid entry is in use, the removal took effect
    assert not knows(store, KEY_A)
    assert knows(store, KEY_B)
    assert results[-1].degraded
    assert results[-1].problems == (
        "apiKeys[2].key: is shorter than 32 characters", "apiKeys[1]: the same key as apiKeys[0]",
    )

    write_atomically(path, [B])
    assert await key_file.reload()
    assert not results[-1].degraded

    messages = [record.getMessage() + repr(record.__dict__) for record in caplog.records]
    assert any("apiKeys[1]: the same key as apiKeys[0]" in m for m in messages)
    assert any("apiKeys[2].key: is shorter than 32 characters" in m for m in messages)
    assert all(KEY_A not in m and KEY_B not in m and "sk-short" not in m for m in messages)


@pytest.mark.parametrize("broken", ["empty-list", "missing", "not-a-list", "half-written", "not-utf8"])
async def test_an_empty_missing_or_unreadable_list_leaves_no_key_valid_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, broken: str
) -> None:
    path, store, results, key_file = watched_pair(tmp_path, caplog)

    if broken == "empty-list":
        write_atomically(path, [])
    elif broken == "missing":
        path.unlink()
    elif broken == "not-a-list":
        path.write_text("team-a: {}")
    elif broken == "half-written":
        path.write_text(f"- name: team-a\n  key: {KEY_A}\n  models: [oops")
    else:
        path.write_bytes(b"- name: team-a\n  key: sk-\xff\xfe" + KEY_A.encode())
    assert not await key_file.reload()

    assert len(store) == 0  # closed: no old key lives on
    assert results[-1].degraded
    assert results[-1].keys == 0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors
    assert "NO KEY IS VALID" in errors[-1].getMessage()
    assert all(KEY_A not in repr(r.__dict__) for r in caplog.records)


async def test_a_key_rotated_in_place_with_the_same_size_and_mtime_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    rotated = KEY_A[:-4] + "wxyz"  # the same length: the file keeps its size
    path.write_text(yaml.safe_dump([A]))
    before = path.stat()
    store = KeyStore()
    async with watching(KeyFile(path, store, interval=0.02)):
        with path.open("r+") as file:  # same inode, same size
            file.write(yaml.safe_dump([{**A, "key": rotated}]))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the old modification time
        after = path.stat()
        same = (after.st_ino, after.st_size, after.st_mtime_ns)
        assert same == (before.st_ino, before.st_size, before.st_mtime_ns)
        await until(lambda: knows(store, rotated), within=5.0)
    assert not knows(store, KEY_A)


async def test_an_unchanged_file_is_not_read_again(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    write_atomically(path, [A])
    key_file = KeyFile(path, KeyStore())
    assert not key_file.changed()
    write_atomically(path, [A, B])
    assert key_file.changed()
    await key_file.reload()
    assert not key_file.changed()

"""Static endpoints: the --endpoints flag and an endpoints file that changes while the EPP runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from epp.datastore import Datastore
from epp.discovery import EndpointsFileError, StaticDiscovery, parse_endpoint_list, parse_endpoints_yaml

from .support import eventually, running

TWO_PODS = """\
endpoints:
  - {name: gemma-0, address: 127.0.0.1, port: 8001, labels: {app: gemma}}
  - {name: phi-0, address: 127.0.0.1, port: 8002, labels: {app: phi}}
"""


def addresses(datastore: Datastore) -> set[str]:
    return {endpoint.address for endpoint in datastore}


def test_the_endpoints_flag_names_each_endpoint_by_its_address() -> None:
    endpoints = parse_endpoint_list("127.0.0.1:8001, 10.0.0.2:8000,[::1]:9000")
    assert [(e.name, e.address, e.port) for e in endpoints] == [
        ("127.0.0.1:8001", "127.0.0.1", 8001),
        ("10.0.0.2:8000", "10.0.0.2", 8000),
        ("[::1]:9000", "::1", 9000),
    ]


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("127.0.0.1", "entry 1 ('127.0.0.1'): expected IP:PORT"),
        ("127.0.0.1:8001,127.0.0.1:http", "entry 2 ('127.0.0.1:http') field 'port'"),
        ("127.0.0.1:70000", "field 'port': Input should be less than or equal to 65535"),
        ("gemma.local:8000", "field 'address': Value error, must be an IP address"),
        ("127.0.0.1:8001,,127.0.0.1:8002", "entry 2 (''): empty entry"),
        ("127.0.0.1:8001,127.0.0.1:8001", "entry 2 ('127.0.0.1:8001'): 127.0.0.1:8001 is listed twice"),
    ],
)
def test_a_bad_endpoints_flag_says_which_entry_and_field(flag: str, expected: str) -> None:
    with pytest.raises(EndpointsFileError, match=re.escape(expected)):
        parse_endpoint_list(flag)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "endpoints:\n  - {name: gemma-0, address: 127.0.0.1, port: eighty}\n",
            "endpoints[0] (name 'gemma-0') field 'port': Input should be a valid integer",
        ),
        (
            "endpoints:\n  - {name: a, address: 127.0.0.1, port: 1}\n  - {name: b, port: 2}\n",
            "endpoints[1] (name 'b') field 'address': Field required",
        ),
        (
            "endpoints:\n  - {name: a, address: 127.0.0.1, port: 1, labels: {app: 7}}\n",
            "endpoints[0] (name 'a') field 'labels.app': Input should be a valid string",
        ),
        (
            "endpoints:\n  - {name: a, address: 127.0.0.1, port: 1, weight: 3}\n",
            "endpoints[0] (name 'a') field 'weight': Extra inputs are not permitted",
        ),
        ("pods: []\n", "field 'endpoints': Field required"),
        ("endpoints: [\n", "not valid YAML"),
        ("- just a list\n", "expected a mapping"),
    ],
)
def test_a_bad_endpoints_file_names_the_entry_and_field(text: str, expected: str) -> None:
    with pytest.raises(EndpointsFileError) as raised:
        parse_endpoints_yaml(text, "pool.yaml")
    assert str(raised.value).startswith("pool.yaml: ")
    assert expected in str(raised.value)


def test_an_unreadable_endpoints_file_fails_at_startup(tmp_path: Path) -> None:
    with pytest.raises(EndpointsFileError, match="cannot read"):
        StaticDiscovery(Datastore(), file=tmp_path / "missing.yaml")


async def test_a_static_list_is_loaded_and_the_datastore_marked_synced() -> None:
    datastore = Datastore()
    discovery = StaticDiscovery(datastore, parse_endpoint_list("127.0.0.1:8001,127.0.0.1:8002"))
    assert not datastore.synced
    async with running(discovery):
        await eventually(lambda: datastore.synced, what="first load")
        assert addresses(datastore) == {"127.0.0.1:8001", "127.0.0.1:8002"}


async def test_a_pod_added_to_and_removed_from_the_file_is_picked_up_mid_run(tmp_path: Path) -> None:
    file = tmp_path / "pool.yaml"
    file.write_text(TWO_PODS)
    datastore = Datastore()
    discovery = StaticDiscovery(datastore, file=file, poll_interval=0.02)
    async with running(discovery):
        await eventually(lambda: datastore.synced, what="first load")
        assert addresses(datastore) == {"127.0.0.1:8001", "127.0.0.1:8002"}
        gemma = datastore.get("127.0.0.1:8001")
        assert gemma is not None
        assert gemma.labels == {"app": "gemma"}
        gemma.models_known = True  # what the prober would have learnt: must survive a re-read

        file.write_text(TWO_PODS + "  - {name: gemma-1, address: 127.0.0.1, port: 8003}\n")
        await eventually(lambda: "127.0.0.1:8003" in addresses(datastore), what="the new pod")

        file.write_text("\n".join(line for line in TWO_PODS.splitlines() if "phi-0" not in line))
        await eventually(lambda: addresses(datastore) == {"127.0.0.1:8001"}, what="the pods to go")
        assert datastore.get("127.0.0.1:8001") is gemma
        assert gemma.models_known


async def test_a_bad_edit_keeps_the_last_good_list_and_counts_an_error(tmp_path: Path) -> None:
    file = tmp_path / "pool.yaml"
    file.write_text(TWO_PODS)
    datastore = Datastore()
    seen: list[str] = []
    discovery = StaticDiscovery(datastore, file=file, poll_interval=0.02, on_error=seen.append)
    async with running(discovery):
        await eventually(lambda: datastore.synced, what="first load")
        file.write_text("endpoints:\n  - {name: broken, address: 127.0.0.1}\n")
        await eventually(lambda: discovery.errors > 0, what="the error to be counted")
        assert addresses(datastore) == {"127.0.0.1:8001", "127.0.0.1:8002"}
        assert seen[0] == "static"

        file.write_text("endpoints:\n  - {name: fixed, address: 127.0.0.1, port: 8009}\n")
        await eventually(lambda: addresses(datastore) == {"127.0.0.1:8009"}, what="the fixed file")


async def test_renaming_an_endpoint_in_the_file_updates_it_in_place(tmp_path: Path) -> None:
    file = tmp_path / "pool.yaml"
    file.write_text(TWO_PODS)
    datastore = Datastore()
    async with running(StaticDiscovery(datastore, file=file, poll_interval=0.02)):
        await eventually(lambda: datastore.synced, what="first load")
        file.write_text(TWO_PODS.replace("name: phi-0", "name: phi-renamed"))
        await eventually(
            lambda: getattr(datastore.get("127.0.0.1:8002"), "name", None) == "phi-renamed",
            what="the rename",
        )
        assert len(datastore) == 2


def test_two_entries_of_a_file_on_one_address_are_rejected() -> None:
    text = "endpoints:\n- {name: a, address: 127.0.0.1, port: 1}\n- {name: b, address: 127.0.0.1, port: 1}\n"
    with pytest.raises(EndpointsFileError, match=re.escape("endpoints[1] (name 'b') field 'address'/'port'")):
        parse_endpoints_yaml(text)

import pytest
from epp.scheduling import ConfigError

from tests.epp.scheduling.builders import endpoint, plugin, request


def test_keeps_decode_capable_and_unlabelled_endpoints_and_drops_prefill_only_ones():
    pods = [
        endpoint("decode", labels={"llm-d.ai/role": "decode"}),
        endpoint("both", labels={"llm-d.ai/role": "both"}),
        endpoint("prefill-decode", labels={"llm-d.ai/role": "prefill-decode"}),
        endpoint("prefill", labels={"llm-d.ai/role": "prefill"}),
        endpoint("regular"),
    ]
    kept = plugin("decode-filter").filter({}, request(), pods)
    assert [e.name for e in kept] == ["decode", "both", "prefill-decode", "regular"]


def test_takes_no_parameters():
    with pytest.raises(ConfigError, match=r"parameter 'role': unknown parameter \(decode-filter takes no"):
        plugin("decode-filter", {"role": "decode"})

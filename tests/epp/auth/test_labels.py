"""The api_key_name label stays bounded whatever names reach it."""

from __future__ import annotations

from epp.auth.labels import NO_KEY, OTHER_TENANT, UNKNOWN_KEY, TenantLabels, key_name
from epp.auth.store import Tenant


def test_the_epp_labels_known_names_and_folds_the_rest() -> None:
    labels = TenantLabels(limit=2)
    assert labels.label(None) == "_none"
    assert labels.label("") == "_none"
    assert labels.label("team-a") == "team-a"
    assert labels.label("not a name!") == OTHER_TENANT
    assert labels.label("team-b") == "team-b"
    assert labels.label("team-c") == OTHER_TENANT  # past the limit
    assert labels.label("team-a") == "team-a"  # names already in use keep their label


def test_the_front_door_labels_a_request_by_its_tenant_or_why_it_has_none() -> None:
    assert key_name(Tenant("team-a", b"", None, None), "routed") == "team-a"
    assert key_name(None, "no_key") == NO_KEY
    assert key_name(None, "bad_key") == UNKNOWN_KEY
    assert key_name(None, "cancelled") == NO_KEY

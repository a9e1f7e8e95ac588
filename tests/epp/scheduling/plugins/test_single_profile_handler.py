import pytest
from epp.scheduling.framework import ProfileOutcome

from tests.epp.scheduling.builders import plugin, request


def test_runs_the_one_profile_once_and_makes_it_primary():
    handler = plugin("single-profile-handler")
    assert list(handler.pick_profiles(request(), ["default"], {})) == ["default"]
    done = {"default": ProfileOutcome([], {})}
    assert list(handler.pick_profiles(request(), ["default"], done)) == []
    assert handler.primary(request(), done) == "default"


def test_refuses_more_than_one_profile():
    with pytest.raises(ValueError, match="needs exactly one scheduling profile, the config has 2"):
        plugin("single-profile-handler").validate_profiles(["a", "b"])

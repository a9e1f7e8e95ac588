"""The plugin registry: every plugin class registers itself one way, under a type name written once."""

import ast
import pkgutil
import random
from pathlib import Path

import epp.scheduling.plugins
import pytest
from epp.scheduling.errors import ConfigError
from epp.scheduling.framework import Filter, Handle, Picker, Plugin, ProfileHandler, Scorer
from epp.scheduling.params import NoParameters
from epp.scheduling.registry import KINDS, PLUGIN_TYPES, configure, register

SOURCE = Path(epp.scheduling.plugins.__file__).parents[2]  # epp/src/epp


def _string_constants() -> list[str]:
    """Every string literal in the EPP's source (docstrings and f-string parts are not whole names)."""
    found = []
    for path in SOURCE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.append(node.value)
    return found


def test_each_registered_type_name_is_written_once_in_the_source():
    constants = _string_constants()
    assert PLUGIN_TYPES
    for type_name in PLUGIN_TYPES:
        assert constants.count(type_name) == 1, type_name


def test_each_type_name_is_its_class_type_name_or_one_of_its_aliases():
    for type_name, entry in PLUGIN_TYPES.items():
        assert entry.type_name == type_name
        assert type_name in (entry.plugin.type_name, *entry.plugin.aliases)
        assert entry.plugin.__dict__.get("type_name") == entry.plugin.type_name  # its own, not inherited


def test_every_plugin_module_registers_its_plugin_and_the_package_imports_them_all():
    registered = {entry.plugin.__module__ for entry in PLUGIN_TYPES.values()}
    modules = {
        info.name
        for info in pkgutil.walk_packages(epp.scheduling.plugins.__path__, "epp.scheduling.plugins.")
        if not info.ispkg
    }
    helpers = {"epp.scheduling.plugins.pickers.base", "epp.scheduling.plugins.pickers.parameters"}
    assert registered == modules - helpers


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_of_plugin_is_registered_the_same_way(kind):
    assert any(issubclass(entry.plugin, kind) for entry in PLUGIN_TYPES.values())


@pytest.mark.parametrize("type_name", sorted(PLUGIN_TYPES))
def test_every_plugin_type_builds_from_its_default_parameters(type_name):
    built = PLUGIN_TYPES[type_name].create("p", None, Handle(random.Random(0)))
    assert isinstance(built, PLUGIN_TYPES[type_name].plugin)
    assert built.name == "p"


def test_a_type_name_cannot_be_registered_twice():
    class Again(Scorer):
        type_name = "queue-scorer"

        def score(self, state, request, endpoints):
            return []

    with pytest.raises(TypeError, match="plugin type 'queue-scorer' registered twice"):
        register(Again)


def test_a_plugin_is_exactly_one_kind():
    class Both(Filter, Scorer):
        type_name = "filter-and-scorer"

        def filter(self, state, request, endpoints):
            return endpoints

        def score(self, state, request, endpoints):
            return []

    class Neither(Plugin):
        type_name = "neither"

    for cls in (Both, Neither):
        with pytest.raises(TypeError, match="a plugin is exactly one of"):
            register(cls)
    assert "filter-and-scorer" not in PLUGIN_TYPES
    assert "neither" not in PLUGIN_TYPES


def test_the_kinds_are_the_four_plugin_interfaces():
    assert set(KINDS) == {Filter, Scorer, Picker, ProfileHandler}


def test_a_value_error_from_configure_names_the_plugin():
    class Fussy(Scorer):
        type_name = "fussy-scorer"

        @classmethod
        def configure(cls, name, parameters, handle):
            raise ValueError("needs a friend")

        def score(self, state, request, endpoints):
            return []

    with pytest.raises(ConfigError, match=r"^plugin 'picky': needs a friend$"):
        configure(Fussy, "picky", NoParameters(), Handle())

"""The config schema and the settings dataclasses say the same thing: every section that
a settings dataclass reads has exactly its fields, with the same choices and bounds; the
method lists of the schema are the method registry's."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from conftest import ROOT

SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())


def settings_classes() -> dict[str, type]:
    """config section (dotted) -> its settings dataclass, for every subclass of Settings."""
    import importlib
    import pkgutil

    import sglora
    from sglora.io import Settings

    for mod in pkgutil.walk_packages(sglora.__path__, "sglora."):  # every module that may define settings
        if not mod.name.endswith("__main__"):  # that one runs the command line
            importlib.import_module(mod.name)

    def all_subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from all_subclasses(sub)

    found = {c.section: c for c in all_subclasses(Settings)}
    found["cond_pdiff"] = found["pdiff"]  # COND P-Diff reads the same settings from its own section
    return found


#: settings sections that sit inside a map (one per dataset)
NESTED = {"captioner.options": "datasets.*.captioner.options"}
#: settings that are a whole config of their own (a study's), with its own schema
OWN_SCHEMA = {"study": "repository_size.schema.yaml"}


def section(path: str) -> dict:
    if path in OWN_SCHEMA:
        return yaml.safe_load((ROOT / "workflow" / "schemas" / OWN_SCHEMA[path]).read_text())
    node = SCHEMA
    for key in NESTED.get(path, path).split("."):
        node = node["additionalProperties"] if key == "*" else node["properties"][key]
    if "$ref" in node:
        node = SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[1]]
    return node


def test_every_settings_class_has_a_section():
    assert set(settings_classes()) >= {"lora", "training", "prior", "cvae", "sampling", "premises", "mole", "pdiff",
                                       "cond_pdiff", "backbone.pretrain", "captioner.options"}


@pytest.mark.parametrize("name", sorted(settings_classes()))
def test_section_keys_are_the_dataclass_fields(name):
    cls, node = settings_classes()[name], section(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    keys = set(node["properties"])
    assert node.get("additionalProperties") is False, f"{name}: the schema must refuse unknown keys"
    assert keys == fields, f"{name}: only in the schema {sorted(keys - fields)}, only in {cls.__name__} {sorted(fields - keys)}"


@pytest.mark.parametrize("name", sorted(settings_classes()))
def test_section_bounds_are_the_dataclass_bounds(name):
    cls, node = settings_classes()[name], section(name)
    for f in dataclasses.fields(cls):
        prop, meta = node["properties"][f.name], f.metadata
        if "items" in prop and "choices" in meta:
            prop = prop["items"]
        assert list(prop.get("enum", [])) == list(meta.get("choices", [])), f"{name}.{f.name}: choices"
        assert prop.get("minimum") == meta.get("min"), f"{name}.{f.name}: minimum"
        assert prop.get("maximum") == meta.get("max"), f"{name}.{f.name}: maximum"
        assert prop.get("exclusiveMinimum") == meta.get("above"), f"{name}.{f.name}: exclusive minimum"


def test_schema_methods_are_the_registry():
    from sglora.methods import METHODS
    from sglora.evaluation.method_selection import SETTINGS

    group = SCHEMA["properties"]["groups"]["additionalProperties"]
    assert group["properties"]["methods"]["items"]["enum"] == list(METHODS)
    selection = SCHEMA["properties"]["selection"]["properties"]
    assert {m: tuple(axes["properties"]) for m, axes in selection.items()} == SETTINGS


def test_settings_are_checked_when_made_directly():
    from sglora.generator.settings import CVAESpec
    from sglora.io import SGLoraError

    with pytest.raises(SGLoraError, match="cvae.normalization"):
        CVAESpec(normalization="minmax")
    with pytest.raises(SGLoraError, match="cvae.latent must be >= 1"):
        CVAESpec(latent=0)
    assert all(f.metadata.get("help") for f in dataclasses.fields(CVAESpec))


def test_json_flag_errors_name_the_flag(capsys):
    from sglora.cli import main

    assert main(["train-cvae", "--repository", "r", "--out", "o", "--prior", "{k: 2}"]) == 2
    assert "--prior: not valid JSON" in capsys.readouterr().err

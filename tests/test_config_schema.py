"""The config schema documents, defaults and checks every key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = str(ROOT / "workflow" / "schemas" / "config.schema.yaml")


def load(name: str) -> dict:
    with open(ROOT / "config" / name) as f:
        return yaml.safe_load(f)


def schema() -> dict:
    with open(SCHEMA) as f:
        return yaml.safe_load(f)


def error_text(config: dict) -> str:
    with pytest.raises(WorkflowError) as err:
        validate(config, SCHEMA)
    # what the user reads: snakemake's message with the jsonschema error and its path
    return str(err.value)


def properties(node: dict, path: str = ""):
    """(dotted path, subschema) of every property at every level."""
    for key, sub in node.get("properties", {}).items():
        yield f"{path}{key}", sub
        yield from properties(sub, f"{path}{key}.")
        if isinstance(sub.get("items"), dict):
            yield from properties(sub["items"], f"{path}{key}[].")


def test_default_config_validates_unchanged():
    config = load("config.yaml")
    before = copy.deepcopy(config)
    validate(config, SCHEMA)
    assert config == before  # config.yaml already spells out every key


def test_empty_config_gets_every_default():
    config = {}
    validate(config, SCHEMA)
    assert config["data_dir"] == "demo"
    assert config["train"]["epochs"] == 30
    assert config["train"]["early_stopping"]["patience"] == 15
    assert config["plan"]["custom_configuration"]["patch_size"] == [32, 48, 64]
    assert config["plan"]["configuration"] == "3d_cpu"
    for dotted, sub in properties(schema()):
        if "[]" in dotted:
            continue
        node = config
        for key in dotted.split("."):
            assert key in node, f"default of {dotted} not filled"
            node = node[key]
        if sub.get("type") != "object":
            assert node == sub["default"], dotted


def test_defaults_equal_config_yaml():
    """The schema defaults are the CPU demo, as config.yaml is."""
    config = {}
    validate(config, SCHEMA)
    assert config == load("config.yaml")


def test_every_property_has_default_and_description():
    found = list(properties(schema()))
    assert len(found) > 40
    for dotted, sub in found:
        assert "default" in sub, f"{dotted} has no default"
        assert isinstance(sub.get("description"), str) and sub["description"].strip(), f"{dotted} has no description"
        assert "type" in sub, f"{dotted} has no type"


def test_objects_reject_unknown_keys_at_every_level():
    for dotted, sub in [("", schema()), *properties(schema())]:
        if sub.get("type") == "object":
            assert sub.get("additionalProperties") is False, f"{dotted or 'top level'} accepts unknown keys"


def test_gpu_config_validates_and_selects_the_full_recipe():
    config = load("gpu.yaml")
    validate(config, SCHEMA)
    assert config["plan"]["planner"] == "nnUNetPlannerResEncM"
    assert config["plan"]["configuration"] == "3d_fullres"
    assert config["train"]["epochs"] == 500
    assert config["train"]["early_stopping"]["patience"] == 100
    assert config["train"]["cls_warmup_epochs"] == 15
    # never a silent fallback: no demo cohort, no CPU
    assert config["data_dir"] == ""
    assert config["train"]["device"] == "cuda"


@pytest.mark.parametrize(
    "config,key",
    [
        ({"train": {"epochs": "ten"}}, "epochs"),
        ({"train": {"epochs": 0}}, "epochs"),
        ({"train": {"head": "foo"}}, "head"),
        ({"trian": {"epochs": 3}}, "trian"),
        ({"train": {"early_stopping": {"patience": -1}}}, "patience"),
        ({"train": {"early_stopping": {"pateince": 3}}}, "pateince"),
        ({"plan": {"planner": "nnUNetPlannerResEncXXL"}}, "planner"),
        ({"plan": {"custom_configuration": {"patch_size": [32, 48]}}}, "patch_size"),
        ({"dataset": {"name": "Pancreas MTL"}}, "name"),
        ({"ingest": {"label_tolerance": 0.5}}, "label_tolerance"),
        ({"predict": {"tta": "yes"}}, "tta"),
        ({"predict": {"checkpoint": "checkpoint_best.pth"}}, "checkpoint"),
        ({"threads": 0}, "threads"),
    ],
)
def test_wrong_values_are_rejected_naming_the_key(config, key):
    assert f"'{key}'" in error_text(config)


def test_heldout_like_benchmark_config_overlays_the_default():
    config = load("config.yaml")
    with open(ROOT / "benchmarks" / "heldout_like.yaml") as f:
        overlay = yaml.safe_load(f)
    config["results_dir"] = overlay["results_dir"]
    config["demo"].update(overlay["demo"])
    validate(config, SCHEMA)
    assert config["demo"] == {
        "n_train": 60,
        "n_validation": 24,
        "n_test": 24,
        "seed": 7,
        "n_subtypes": 3,
        "difficulty": "quick",
        "size": "quick",
    }

"""Conda environments agree with pyproject.toml, and every rule names an env and a log."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
ENV_FILES = sorted((ROOT / "envs").glob("*.yaml"))
RULE_FILES = sorted((ROOT / "workflow" / "rules").glob("*.smk"))
CONDA_TO_PYPI = {"pytorch": "torch", "pytorch-cpu": "torch", "pytorch-gpu": "torch", "matplotlib-base": "matplotlib"}
SKIP = {"python", "pip"}


def pyproject_ranges() -> dict[str, SpecifierSet]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    return {canonicalize_name(r.name): r.specifier for r in map(Requirement, deps)}


def parse_conda(spec: str) -> tuple[str, SpecifierSet]:
    """`name >=a,<b =*build*` (conda MatchSpec with spaces) -> (PyPI name, version range)."""
    name, *rest = spec.split()
    version = [part for part in rest if "*" not in part]  # drop build strings like =*cuda*
    assert len(version) <= 1, f"cannot read conda spec {spec!r}"
    return CONDA_TO_PYPI.get(name, name), SpecifierSet(version[0] if version else "")


def env_pins(path: Path) -> list[tuple[str, str, SpecifierSet]]:
    """(as written, PyPI name, version range) for every conda and pip entry that is a package."""
    pins = []
    for entry in yaml.safe_load(path.read_text())["dependencies"]:
        if isinstance(entry, dict):
            for pip_entry in entry.get("pip", []):
                if pip_entry.startswith("-"):
                    continue  # -e .., --extra-index-url ...
                req = Requirement(pip_entry)
                pins.append((pip_entry, req.name, req.specifier))
            continue
        if entry.split()[0] in SKIP:
            continue
        name, spec = parse_conda(entry)
        pins.append((entry, name, spec))
    return pins


def test_conda_spec_normalisation():
    assert parse_conda("pytorch >=2.4,<2.15 =*cuda*") == ("torch", SpecifierSet(">=2.4,<2.15"))
    assert parse_conda("matplotlib-base >=3.8,<4") == ("matplotlib", SpecifierSet("<4,>=3.8"))
    assert parse_conda("numpy") == ("numpy", SpecifierSet(""))


def test_env_files_exist():
    assert {p.name for p in ENV_FILES} >= {"nnunet.yaml", "tools.yaml"}


@pytest.mark.parametrize("env", ENV_FILES, ids=lambda p: p.name)
def test_env_versions_match_pyproject(env):
    ranges = pyproject_ranges()
    pins = env_pins(env)
    assert pins
    for written, name, spec in pins:
        key = canonicalize_name(name)
        assert key in ranges, f"{env.name}: {written!r} is not a dependency in pyproject.toml"
        assert str(spec), f"{env.name}: {written!r} has no version range"
        assert spec == ranges[key], f"{env.name}: {written!r} differs from pyproject.toml ({ranges[key]})"


@pytest.mark.parametrize("env", ENV_FILES, ids=lambda p: p.name)
def test_env_installs_this_package(env):
    pip = [e for e in yaml.safe_load(env.read_text())["dependencies"] if isinstance(e, dict)]
    assert any("-e .." in entries.get("pip", []) for entries in pip)


def env_constants() -> dict[str, str]:
    text = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    return dict(re.findall(r'^(ENV_\w+)\s*=\s*"([^"]+)"', text, flags=re.M))


def rules() -> list[tuple[str, str, dict[str, str]]]:
    """(file, rule name, {directive: first value line}) for every rule of workflow/rules."""
    found = []
    for path in RULE_FILES:
        for chunk in ("\n" + path.read_text()).split("\nrule ")[1:]:
            name, _, body = chunk.partition(":")
            directives = {}
            lines = body.splitlines()
            for i, line in enumerate(lines):
                m = re.match(r"^    (\w+):\s*(.*)$", line)
                if m:
                    value = m.group(2) or (lines[i + 1].strip() if i + 1 < len(lines) else "")
                    directives[m.group(1)] = value.rstrip(",")
                elif line and not line.startswith(" ") and not line.startswith("#"):
                    break  # end of this rule: a top-level statement
            found.append((path.name, name.strip(), directives))
    return found


def test_env_constants_point_at_env_files():
    constants = env_constants()
    assert set(constants) >= {"ENV_NNUNET", "ENV_TOOLS"}
    for name, rel in constants.items():
        assert (ROOT / "workflow" / "rules" / rel).resolve().is_file(), f"{name} = {rel!r} does not exist"


def test_rules_are_found():
    names = {name for _, name, _ in rules()}
    assert {"ingest_cohort", "train_fold", "predict_split", "train", "predict"} <= names


def test_every_conda_directive_names_an_existing_env():
    constants = env_constants()
    for file, name, directives in rules():
        if "conda" not in directives:
            continue
        value = directives["conda"]
        if value in constants:
            rel = constants[value]
        else:
            assert value[:1] in "\"'", f"{file}: rule {name} conda: {value!r} is neither a constant nor a path"
            rel = value.strip("\"'")
        assert (ROOT / "workflow" / "rules" / rel).resolve().is_file(), f"{file}: rule {name} env {rel!r} missing"


def test_every_rule_has_log_and_conda_except_target_rules():
    for file, name, directives in rules():
        if set(directives) == {"input"}:
            continue  # a target rule: only gathers other rules' outputs
        missing = {"log", "conda"} - set(directives)
        assert not missing, f"{file}: rule {name} lacks {sorted(missing)}"

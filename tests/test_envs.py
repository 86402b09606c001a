"""Conda environments build wherever Snakemake puts them, provide what their rules import and agree
with pyproject.toml; every rule names an env and a log."""

from __future__ import annotations

import ast
import hashlib
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tomllib
from functools import cache
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path
from urllib.parse import urlparse

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
# conda-only packages: no PyPI counterpart in pyproject.toml
CONDA_ONLY = {"cuda-version"}


def pyproject_ranges() -> dict[str, SpecifierSet]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    return {canonicalize_name(r.name): r.specifier for r in map(Requirement, deps)}


def parse_conda(spec: str) -> tuple[str, SpecifierSet]:
    """`name >=a,<b =*build*` (conda MatchSpec with spaces) -> (PyPI name, version range)."""
    name, *rest = spec.split()
    version = [part for part in rest if not part.lstrip("=").startswith("*")]  # drop builds like =*cuda*
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
        if entry.split()[0] in SKIP | CONDA_ONLY:
            continue
        name, spec = parse_conda(entry)
        pins.append((entry, name, spec))
    return pins


def test_conda_spec_normalisation():
    assert parse_conda("pytorch >=2.4,<2.15 =*cuda*") == ("torch", SpecifierSet(">=2.4,<2.15"))
    assert parse_conda("matplotlib-base >=3.8,<4") == ("matplotlib", SpecifierSet("<4,>=3.8"))
    assert parse_conda("numpy") == ("numpy", SpecifierSet(""))
    assert parse_conda("pytorch-gpu >=2.4,<2.15,!=2.9.*") == ("torch", SpecifierSet(">=2.4,<2.15,!=2.9.*"))


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


def test_pyproject_depends_on_what_report_and_nnunet_need():
    with open(ROOT / "pyproject.toml", "rb") as f:
        deps = {canonicalize_name(r.name): r for r in map(Requirement, tomllib.load(f)["project"]["dependencies"])}
    assert "reports" in deps["snakemake"].extras  # pygments, for snakemake --report
    assert not deps["torch"].specifier.contains("2.9.1")  # nnunetv2 excludes torch 2.9.*


def test_gpu_env_asks_for_a_cuda_build_within_a_driver_range():
    """conda-forge gives CPU-only PyTorch unless asked for pytorch-gpu; cuda-version bounds the
    CUDA of the build so that none newer than the nodes' driver runs is picked."""
    names = {
        str(e).split()[0]: str(e) for e in yaml.safe_load((ROOT / "envs" / "nnunet.yaml").read_text())["dependencies"]
    }
    assert "pytorch-gpu" in names and "pytorch" not in names and "pytorch-cpu" not in names
    assert re.fullmatch(r"cuda-version >=\d+(\.\d+)?,<\d+(\.\d+)?", names["cuda-version"])
    tools = {str(e).split()[0] for e in yaml.safe_load((ROOT / "envs" / "tools.yaml").read_text())["dependencies"]}
    assert not {"pytorch", "pytorch-gpu", "cuda-version"} & tools


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


# --- env files build from Snakemake's copy -----------------------------------------------------
# Snakemake copies an env file to <conda-prefix>/<hash>.yaml and runs `conda env create --file`
# on the copy (snakemake/deployment/conda.py); conda runs pip from the copy's folder. Anything
# that names a file or folder is then read relative to .snakemake/conda, not to this repository.
PIP_FILE_OPTIONS = ("-e", "--editable", "-r", "--requirement", "-c", "--constraint", "-f", "--find-links")


def relative_references(env: dict) -> list[str]:
    """Entries of a parsed env file that name a local path (resolved relative to the file)."""
    found = []

    def local(target: str) -> bool:
        scheme = urlparse(target).scheme
        return scheme in ("", "file") or len(scheme) == 1  # a: is a Windows drive

    for channel in env.get("channels", []):
        if local(channel) and ("/" in channel or channel.startswith(".")):
            found.append(f"channel {channel}")
    for entry in env.get("dependencies", []):
        if isinstance(entry, dict):
            for pip_entry in entry.get("pip", []):
                option, _, value = pip_entry.partition(" ")
                if option.split("=")[0] in PIP_FILE_OPTIONS:
                    target = value.strip() or option.partition("=")[2]
                    if local(target):
                        found.append(f"pip {pip_entry}")
                    continue
                if pip_entry.startswith("-"):
                    continue  # an index or another option that names no file
                if pip_entry.startswith((".", "/", "~", "file:")):
                    found.append(f"pip {pip_entry}")
                    continue
                try:
                    req = Requirement(pip_entry)
                except Exception:
                    found.append(f"pip {pip_entry} (not a requirement)")
                    continue
                if req.url and local(req.url):
                    found.append(f"pip {pip_entry}")
        elif entry.startswith((".", "/", "~", "file:")) or "::" not in entry and "/" in entry.split()[0]:
            found.append(f"conda {entry}")
    return found


def snakemake_copy(env_file: Path, conda_prefix: Path) -> Path:
    """Copy an env file the way Snakemake does before building it: <prefix>/<md5>.yaml."""
    from snakemake.deployment.conda import copy_permission_safe

    content = env_file.read_bytes()
    digest = hashlib.md5(str(conda_prefix.resolve()).encode() + content, usedforsecurity=False)
    target = conda_prefix / f"{digest.hexdigest()}.yaml"
    conda_prefix.mkdir(parents=True, exist_ok=True)
    copy_permission_safe(str(env_file), str(target))
    return target


def test_relative_references_are_detected():
    broken = {"dependencies": ["numpy", "./local.tar.bz2", {"pip": ["nnunetv2>=2.8", "-e ..", "-r reqs.txt"]}]}
    assert relative_references(broken) == ["conda ./local.tar.bz2", "pip -e ..", "pip -r reqs.txt"]
    fine = {
        "channels": ["conda-forge", "nodefaults"],
        "dependencies": ["pytorch-gpu >=2.4 =*cuda*", "conda-forge::numpy", {"pip": [
            "nnunetv2>=2.8,<2.9", "pkg @ https://example.org/pkg-1.0.tar.gz",
            "--extra-index-url https://download.pytorch.org/whl/cu126"]}],
    }  # fmt: skip
    assert relative_references(fine) == []


@pytest.mark.parametrize("env", ENV_FILES, ids=lambda p: p.name)
def test_env_copied_as_snakemake_copies_it_holds_no_relative_path(env, tmp_path):
    copy = snakemake_copy(env, tmp_path / "workdir" / ".snakemake" / "conda")
    assert copy.read_bytes() == env.read_bytes()
    assert relative_references(yaml.safe_load(copy.read_text())) == [], (
        f"{env.name}: these entries would resolve relative to {copy.parent}, not to the repository"
    )


# --- every module a rule's code imports is provided by the rule's env ---------------------------
PACKAGE = "pancreas_mtl"
# nnU-Net imports our trainers by name (nnUNet_extTrainer) when it trains or predicts with them
LOADS_TRAINERS = ("nnunetv2.run", "nnunetv2.inference")
TRAINER_MODULES = (f"{PACKAGE}.nnunet_ext.pancreas_mtl_trainers",)
# provided without the env: the script preamble puts Snakemake's own installation on sys.path
PROVIDED_BY_SNAKEMAKE = {"snakemake"}


def module_file(name: str) -> Path | None:
    path = ROOT.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def guarded_by_import_error(node: ast.Try) -> bool:
    names = set()
    for handler in node.handlers:
        for n in ast.walk(handler.type) if handler.type else ():
            if isinstance(n, ast.Name):
                names.add(n.id)
    return bool(names & {"ImportError", "ModuleNotFoundError"})


def imported_names(tree: ast.AST, module: str, is_package: bool) -> list[str]:
    """Absolute dotted names a module imports, anywhere in it (functions import lazily)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and guarded_by_import_error(node):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    names = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                base = parts if is_package else parts[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            if prefix == "__future__":
                continue
            names.append(prefix)
            names.extend(f"{prefix}.{alias.name}" for alias in node.names)
    return names


def code_imports(script: Path) -> set[str]:
    """Top-level names of what a rule script imports, following this package's modules."""
    external: set[str] = set()
    seen: set[str] = set()
    todo: list[tuple[str, Path, bool]] = [("__main__", script, False)]
    loads_trainers = False
    while todo:
        module, path, is_package = todo.pop()
        for name in imported_names(ast.parse(path.read_text()), module, is_package):
            top = name.split(".")[0]
            if name.startswith(LOADS_TRAINERS):
                loads_trainers = True
            if top != PACKAGE:
                external.add(top)
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                sub = ".".join(parts[:i])
                file = module_file(sub)
                if file and sub not in seen:
                    seen.add(sub)
                    todo.append((sub, file, file.name == "__init__.py"))
        if not todo and loads_trainers:
            loads_trainers = False
            for sub in TRAINER_MODULES:
                if sub not in seen:
                    seen.add(sub)
                    todo.append((sub, module_file(sub), False))
    return {m for m in external if m not in sys.stdlib_module_names and m not in PROVIDED_BY_SNAKEMAKE}


@cache
def distribution_closure(name: str) -> frozenset[str]:
    """A PyPI distribution and everything it requires (what pip installs), from installed metadata."""
    found = {canonicalize_name(name)}
    try:
        requirements = requires(name) or []
    except PackageNotFoundError:
        return frozenset(found)
    for line in requirements:
        req = Requirement(line)
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        found |= distribution_closure(req.name)
    return frozenset(found)


def env_packages(env: Path) -> tuple[set[str], set[str]]:
    """(PyPI names listed in the env, PyPI names it installs: listed plus what its pip part pulls in)."""
    listed, installed = set(), set()
    for entry in yaml.safe_load(env.read_text())["dependencies"]:
        if isinstance(entry, dict):
            for pip_entry in entry.get("pip", []):
                if pip_entry.startswith("-"):
                    continue
                name = canonicalize_name(Requirement(pip_entry).name)
                listed.add(name)
                installed |= distribution_closure(name)
            continue
        name = entry.split()[0].split("::")[-1]
        if name in SKIP | CONDA_ONLY:
            continue
        listed.add(canonicalize_name(CONDA_TO_PYPI.get(name, name)))
    return listed, listed | installed


@cache
def module_distributions() -> dict[str, list[str]]:
    return packages_distributions()


def distributions_of(module: str) -> set[str]:
    return {canonicalize_name(d) for d in module_distributions().get(module, [module])}


def rules_by_env() -> dict[Path, dict[str, Path]]:
    """{env file: {rule: script}} for every rule with a script."""
    constants = env_constants()
    found: dict[Path, dict[str, Path]] = {}
    for _, name, directives in rules():
        if "script" not in directives or "conda" not in directives:
            continue
        rel = constants.get(directives["conda"], directives["conda"].strip("\"'"))
        env = (ROOT / "workflow" / "rules" / rel).resolve()
        script = (ROOT / "workflow" / "rules" / directives["script"].strip("\"'")).resolve()
        found.setdefault(env, {})[name] = script
    return found


def test_import_scan_follows_the_package():
    train = code_imports(ROOT / "workflow" / "scripts" / "train_fold.py")
    # the trainer, loaded by nnU-Net by name, imports batchgeneratorsv2
    assert {"torch", "nnunetv2", "batchgeneratorsv2"} <= train
    assert not {"os", "sys", PACKAGE} & train


@pytest.mark.parametrize("env", ENV_FILES, ids=lambda p: p.name)
def test_env_provides_every_module_its_rules_import(env):
    _, installed = env_packages(env)
    rules_of_env = rules_by_env().get(env.resolve(), {})
    assert rules_of_env, f"no rule uses {env.name}"
    for rule, script in rules_of_env.items():
        for module in sorted(code_imports(script)):
            assert distributions_of(module) & installed, (
                f"rule {rule} imports {module!r}, which {env.name} does not provide"
            )


@pytest.mark.parametrize("env", ENV_FILES, ids=lambda p: p.name)
def test_env_carries_only_what_its_rules_import(env):
    """An entry is there because a rule imports it, or because a pip package that a rule imports
    needs it (listed so that conda, not pip, installs it)."""
    listed, _ = env_packages(env)
    rules_of_env = rules_by_env().get(env.resolve(), {})
    imported = set().union(*(code_imports(s) for s in rules_of_env.values()))
    needed = set().union(*(distributions_of(m) for m in imported))
    pip_needed = set().union(*(distribution_closure(n) - {n} for n in listed & needed))
    for name in sorted(listed):
        assert name in needed or name in pip_needed, (
            f"{env.name}: {name} is imported by none of its rules ({', '.join(sorted(rules_of_env))}) "
            "nor needed by a package they import: remove it"
        )


# --- the pip part of each env resolves --------------------------------------------------------
def index_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


def pip_part(env: Path) -> tuple[list[str], list[str]]:
    """(pip requirements, conda pins as pip constraints) of an env file."""
    pip, constraints = [], []
    for entry in yaml.safe_load(env.read_text())["dependencies"]:
        if isinstance(entry, dict):
            pip.extend(token for e in entry.get("pip", []) for token in shlex.split(e))
        elif entry.split()[0] not in SKIP | CONDA_ONLY:
            name, spec = parse_conda(entry)
            constraints.append(f"{name}{spec}")
    return pip, constraints


@pytest.mark.network
@pytest.mark.parametrize("env", ENV_FILES, ids=lambda p: p.name)
def test_pip_part_of_env_resolves(env, tmp_path):
    """pip resolves the env's pip packages from the index, within the versions conda installs."""
    python_pin = next(e for e in yaml.safe_load(env.read_text())["dependencies"] if str(e).startswith("python "))
    if python_pin.split("=")[-1] != f"{sys.version_info.major}.{sys.version_info.minor}":
        pytest.skip(f"{env.name} pins {python_pin}; this is Python {sys.version.split()[0]}")
    if shutil.which("pip") is None and not index_reachable():
        pytest.skip("pip or the package index is not reachable")
    if not index_reachable():
        pytest.skip("the package index (pypi.org) cannot be reached")
    pip, constraints = pip_part(env)
    assert pip, f"{env.name} has no pip part"
    constraint_file = tmp_path / "conda-pins.txt"
    constraint_file.write_text("\n".join(constraints) + "\n")
    run = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--report", str(tmp_path / "report.json"), "-c", str(constraint_file), *pip],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, f"{env.name}: pip cannot resolve {pip}:\n{run.stderr[-3000:]}"


@pytest.mark.parametrize("script", sorted((ROOT / "workflow" / "scripts").glob("*.py")), ids=lambda p: p.name)
def test_script_finds_the_package_from_the_workflow_folder(script, tmp_path):
    """Nothing installs this package into a rule's env: a script puts the workflow's folder first
    on sys.path before it imports the package, also when run from a copy elsewhere."""
    source = script.read_text()
    head = source.split(f"from {PACKAGE}")[0]
    assert "sys.path.insert(0, str(Path(__file__).resolve().parents[2]))" in head
    run = subprocess.run(
        [sys.executable, "-S", "-E", "-c",  # no site-packages, no PYTHONPATH
         f"__file__ = {str(script)!r}\nexec({head!r})\nimport {PACKAGE}\nprint({PACKAGE}.__file__)"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert Path(run.stdout.strip()) == ROOT / PACKAGE / "__init__.py"

"""Conda envs (envs/*.yaml) agree with pyproject.toml: every pin is a declared dependency inside its range.

Fails, for example, when envs/train.yaml pins trl==1.15.0 or torch==2.14.0 (outside the pyproject
range), pins an undeclared package such as deepspeed, or drops trl from the train env.
"""

import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).parents[2]
ENVS = ("train", "eval", "report")
TRAIN_NEEDS = {"trl", "torch", "transformers", "accelerate", "peft", "datasets", "mlflow"}


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def declared() -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in project()["dependencies"]]
    return {canonicalize_name(r.name): r for r in reqs}


def env_pins(name: str) -> tuple[list[str], dict[str, Version]]:
    """(conda specs, {pip package: pinned version}) of envs/<name>.yaml; pip entries must be exact pins."""
    env = yaml.safe_load((ROOT / "envs" / f"{name}.yaml").read_text())
    assert env["channels"] == ["conda-forge"]
    conda, pip = [], {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for line in dep["pip"]:
                req = Requirement(line)
                specs = list(req.specifier)
                assert len(specs) == 1 and specs[0].operator == "==", f"{name}: {line!r} is not an exact pin"
                pip[canonicalize_name(req.name)] = Version(specs[0].version)
        else:
            conda.append(dep)
    return conda, pip


@pytest.mark.parametrize("name", ENVS)
def test_env_pins_inside_pyproject_ranges(name):
    deps = declared()
    conda, pip = env_pins(name)
    assert pip, f"envs/{name}.yaml pins no pip packages"
    for package, version in pip.items():
        assert package in deps, f"envs/{name}.yaml pins {package}, which pyproject.toml does not declare"
        assert deps[package].specifier.contains(version, prereleases=True), (
            f"envs/{name}.yaml: {package}=={version} is outside pyproject's {deps[package].specifier}")
    for spec in conda:
        package, _, version = spec.partition("=")
        if package == "pip":
            continue
        if package == "python":
            assert SpecifierSet(project()["requires-python"]).contains(version), spec
            continue
        package = canonicalize_name(package)
        assert package in deps, f"envs/{name}.yaml: conda package {package} is not declared in pyproject.toml"
        assert not version or deps[package].specifier.contains(version.lstrip("="), prereleases=True), spec


def test_trl_pinned_exactly_as_pyproject():
    trl = declared()["trl"]
    (exact,) = list(trl.specifier)
    assert exact.operator == "=="
    for name in ENVS:
        pinned = env_pins(name)[1].get("trl")
        assert pinned is None or pinned == Version(exact.version), f"envs/{name}.yaml: trl {pinned} != {exact}"
    assert env_pins("train")[1]["trl"] == Version(exact.version)


def test_env_contents_per_rule_family():
    train = set(env_pins("train")[1])
    assert TRAIN_NEEDS <= train, f"train env lacks {sorted(TRAIN_NEEDS - train)}"
    assert "trl" not in env_pins("eval")[1] and "peft" in env_pins("eval")[1]
    assert "torch" not in env_pins("report")[1]

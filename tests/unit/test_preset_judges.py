"""Every judge and reward model the presets load from the hub is pinned to a revision (issue 22)."""

from pathlib import Path

import pytest
import yaml

from frpo_workflow.judges import JUDGE_FACTORIES

PRESETS = sorted((Path(__file__).parents[2] / "workflow" / "presets").glob("*.yaml"))


def judge_specs(node, where=""):
    """(config key, spec) of every factory-judge spec anywhere in a config."""
    if isinstance(node, dict):
        if node.get("name") in JUDGE_FACTORIES:
            yield where, node
        for key, value in node.items():
            yield from judge_specs(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from judge_specs(value, f"{where}[{i}]")


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_hub_judges_are_pinned(preset):
    config = yaml.safe_load(preset.read_text())
    for where, spec in judge_specs(config):
        model = spec.get("model")
        if model and model.count("/") == 1:  # a hub repository, not an endpoint's model name
            revision = spec.get("revision")
            assert isinstance(revision, str) and revision, f"{preset.name}: {where} loads {model} unpinned"


def test_the_safety_presets_pin_the_same_revisions():
    pins = {}
    for preset in PRESETS:
        for _, spec in judge_specs(yaml.safe_load(preset.read_text())):
            if spec.get("model", "").count("/") == 1:
                pins.setdefault(spec["model"], set()).add(spec["revision"])
    assert pins, "the presets name hub judges"
    assert all(len(revisions) == 1 for revisions in pins.values()), pins
    assert pins["allenai/Llama-3.1-8B-Instruct-RM-RB2"] == {"2"}  # the authors' revision="2"

"""Accelerate configs (workflow/accelerate/*.yaml) load with accelerate's own loader and say what they claim.

Fails, for example, when a key is misspelt (accelerate rejects unknown keys), when zero3.yaml says
zero_stage: 2, or when cpu.yaml asks for bf16.
"""

from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

DIR = Path(__file__).parents[2] / "workflow" / "accelerate"
EXPECTED = {
    "cpu": {"distributed_type": "NO", "use_cpu": True, "num_processes": 1, "mixed_precision": "no"},
    "cpu_ddp": {"distributed_type": "MULTI_GPU", "use_cpu": False, "mixed_precision": "no"},
    "single_gpu": {"distributed_type": "NO", "use_cpu": False, "num_processes": 1, "mixed_precision": "bf16"},
    "ddp": {"distributed_type": "MULTI_GPU", "use_cpu": False, "mixed_precision": "bf16"},
    "zero2": {"distributed_type": "DEEPSPEED", "mixed_precision": "bf16"},
    "zero3": {"distributed_type": "DEEPSPEED", "mixed_precision": "bf16"},
}


def test_one_file_per_schema_choice():
    schema = yaml.safe_load((DIR.parents[0] / "schemas" / "config.schema.yaml").read_text())
    choices = schema["properties"]["launch"]["properties"]["accelerate_config"]["enum"]
    assert sorted(p.stem for p in DIR.glob("*.yaml")) == sorted(choices) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_and_matches(name):
    path = DIR / f"{name}.yaml"
    assert path.read_text().startswith("#"), "each config starts with a comment saying when to use it"
    config = load_config_from_file(str(path))
    assert isinstance(config, ClusterConfig)
    assert config.compute_environment.value == "LOCAL_MACHINE"
    for key, value in EXPECTED[name].items():
        got = getattr(config, key)
        assert getattr(got, "value", got) == value, f"{name}: {key} = {got!r}, expected {value!r}"


@pytest.mark.parametrize("name,stage", [("zero2", 2), ("zero3", 3)])
def test_deepspeed_settings(name, stage):
    ds = load_config_from_file(str(DIR / f"{name}.yaml")).deepspeed_config
    assert ds["zero_stage"] == stage
    assert ds["offload_optimizer_device"] == ds["offload_param_device"] == "none"
    assert ds["gradient_clipping"] == 1.0
    assert ds["zero3_init_flag"] is (stage == 3)


def test_unknown_key_is_rejected(tmp_path):
    """The loader really checks keys, so the tests above can fail on a typo."""
    bad = tmp_path / "bad.yaml"
    bad.write_text((DIR / "cpu.yaml").read_text() + "mixed_precison: bf16\n")
    with pytest.raises(ValueError, match="mixed_precison"):
        load_config_from_file(str(bad))

"""Training runs from config: real TRL trainers on a tiny model, save/load, LoRA, resume, bad settings."""

import shutil

import pytest
import torch
from transformers import TrainerCallback

from frpo_workflow.base_model import TinyModelConfig, build_tiny_base_model, load_model_and_tokenizer
from frpo_workflow.data.toy import build_toy_world
from frpo_workflow.judges import completion_text, register_judge
from frpo_workflow.train import (last_checkpoint, policy_config, remove_checkpoints, run_policy_optimisation, run_sft,
                                 sft_config)

pytestmark = pytest.mark.slow

@register_judge("test_brevity")
def brevity(prompts, completions, **kwargs):
    """Differs within every group (unlike the toy judges on a barely trained model), so steps move weights."""
    return [1.0 / (1 + len(completion_text(c))) for c in completions]


SMALL = {"pretrain": 200, "align_prompts": 16, "sft_affirmative": 32, "rl_arithmetic": 16}


@pytest.fixture(scope="module")
def world():
    return build_toy_world(0, SMALL)


@pytest.fixture(scope="module")
def base(tmp_path_factory, world):
    out = tmp_path_factory.mktemp("base")
    cfg = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, vocab_size=350,
                          pretrain_epochs=1)
    build_tiny_base_model(world["pretrain"], out, cfg, log=lambda _: None)
    return out


def _params(path):
    model, _ = load_model_and_tokenizer(path)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _changed(a, b):
    return any(not torch.equal(a[k], b[k]) for k in a)


class Kill(TrainerCallback):
    """Stops a run dead after `step` (as a SIGKILL or a SLURM timeout would), checkpoints and all."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"killed at step {self.step}")


SFT = {"lr": 1e-3, "steps": 4, "save_steps": 2, "batch_size": 4}


def test_killed_sft_resumes_from_its_last_checkpoint_then_cleans_up(tmp_path, base, world):
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_sft(base, world["sft_affirmative"], sft_config(SFT), out, ckpt, callbacks=[Kill(3)])
    assert last_checkpoint(ckpt).endswith("checkpoint-2") and not out.exists()
    summary = run_sft(base, world["sft_affirmative"], sft_config(SFT), out, ckpt)
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["global_step"] == 4
    assert _changed(_params(base), _params(out))
    remove_checkpoints(ckpt)  # what the stage CLI does once the output is complete
    assert last_checkpoint(ckpt) is None and not (ckpt / "final").exists() and _changed(_params(base), _params(out))


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, base, world):
    run_sft(base, world["sft_affirmative"], sft_config(SFT), tmp_path / "straight", tmp_path / "ckpt1")
    with pytest.raises(KeyboardInterrupt):
        run_sft(base, world["sft_affirmative"], sft_config(SFT), tmp_path / "killed", tmp_path / "ckpt2",
                callbacks=[Kill(3)])
    run_sft(base, world["sft_affirmative"], sft_config(SFT), tmp_path / "killed", tmp_path / "ckpt2")
    straight, resumed = _params(tmp_path / "straight"), _params(tmp_path / "killed")
    assert all(torch.allclose(straight[k], resumed[k], atol=1e-5) for k in straight)  # same data order, same RNG


def test_a_checkpoint_cut_short_is_passed_over(tmp_path, base, world):
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        run_sft(base, world["sft_affirmative"], sft_config(SFT), tmp_path / "out", ckpt, callbacks=[Kill(3)])
    partial = ckpt / "checkpoint-3"  # killed while writing: weights there, no trainer_state.json
    shutil.copytree(ckpt / "checkpoint-2", partial)
    (partial / "trainer_state.json").unlink()
    assert last_checkpoint(ckpt).endswith("checkpoint-2")
    summary = run_sft(base, world["sft_affirmative"], sft_config(SFT), tmp_path / "out", ckpt)
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["global_step"] == 4


def test_a_job_killed_after_training_does_not_train_again(tmp_path, base, world):
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    first = run_sft(base, world["sft_affirmative"], sft_config(SFT), out, ckpt)
    trained = _params(out)
    shutil.rmtree(out)  # the job died before its output was complete: Snakemake deletes it
    again = run_sft(base, world["sft_affirmative"], sft_config(SFT), out, ckpt, callbacks=[Kill(1)])
    assert again == first and all(torch.equal(trained[k], v) for k, v in _params(out).items())


@pytest.mark.parametrize("change", ["settings", "data", "model"])
def test_checkpoints_of_another_configuration_are_not_resumed(tmp_path, base, world, change):
    ckpt = tmp_path / "ckpt"
    records = world["sft_affirmative"]
    with pytest.raises(KeyboardInterrupt):
        run_sft(base, records, sft_config(SFT), tmp_path / "out", ckpt, callbacks=[Kill(3)])
    assert last_checkpoint(ckpt).endswith("checkpoint-2")
    settings, model = SFT, base
    if change == "settings":
        settings = {**SFT, "lr": 5e-4}
    elif change == "data":
        records = records[1:]
    else:  # the upstream model was rebuilt: its provenance.json (its identity) changed
        model = tmp_path / "rebuilt"
        shutil.copytree(base, model)
        (model / "provenance.json").write_text('{"mlflow_run_id": "another"}')
    summary = run_sft(model, records, sft_config(settings), tmp_path / "out", ckpt)
    assert summary["resumed_from"] is None and summary["global_step"] == 4


@pytest.mark.parametrize("method", ["frpo", "grpo"])
def test_policy_optimisation_trains_and_saves(tmp_path, base, world, method):
    settings = {"method": method, "lr": 1e-3, "steps": 2, "num_generations": 4, "prompts_per_step": 2,
                "max_completion_length": 6, "beta": 0.04, "save_steps": 10,
                "rewards": ["safety", "helpfulness", "test_brevity"]}
    records = world["align_prompts"]
    if method == "frpo":
        settings["lam"] = 0.5
        # Conversations with a system turn train as they are, and a length cap cuts the longer prompts.
        from frpo_workflow.base_model import load_model_and_tokenizer
        from frpo_workflow.prompts import prompt_length

        records = [{**r, "prompt": [{"role": "system", "content": "Be safe."}, {"role": "user", "content": r["prompt"]}]}
                   for r in records]
        tokenizer = load_model_and_tokenizer(base)[1]
        lengths = sorted(prompt_length(tokenizer, r["prompt"]) for r in records)
        settings["max_prompt_length"] = lengths[len(lengths) // 2]
    summary = run_policy_optimisation(base, records, policy_config(settings), tmp_path / "out", tmp_path / "ckpt")
    assert summary["global_step"] == 2
    if method == "frpo":
        assert 0 < summary["prompts_truncated"] < len(records)
    logged = {k for h in summary["log_history"] for k in h}
    assert {"rewards/safety/mean", "rewards/helpfulness/mean", "kl"} <= logged
    assert ("frpo/weight_entropy" in logged) == (method == "frpo")
    assert _changed(_params(base), _params(tmp_path / "out"))


def test_length_in_epochs(tmp_path, base, world):
    records = world["sft_affirmative"][:12]
    summary = run_sft(base, records, sft_config({"lr": 1e-3, "epochs": 2, "steps": 999, "batch_size": 4}),
                      tmp_path / "out", tmp_path / "ckpt")
    assert summary["global_step"] == 6  # 2 passes over 12 records, 4 a step


def test_lora_saves_an_adapter_that_loads_merged(tmp_path, base, world):
    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    cfg = sft_config({"lr": 1e-2, "steps": 2, "batch_size": 4, "lora": lora})
    run_sft(base, world["sft_affirmative"], cfg, tmp_path / "out", tmp_path / "ckpt")
    assert (tmp_path / "out" / "adapter_config.json").exists()
    merged = _params(tmp_path / "out")
    assert not any("lora" in k for k in merged) and _changed(_params(base), merged)


@pytest.mark.parametrize("values, message", [
    ({"method": "frpo"}, "lambda > 0, got lam=None"),
    ({"method": "frpo", "lam": 0.0}, "lambda > 0, got lam=0.0"),
    ({"method": "ppo"}, "unknown method 'ppo'"),
    ({"learning_rate": 1e-4}, r"unknown key\(s\) \['learning_rate'\]"),
])
def test_bad_policy_settings_are_named(values, message):
    with pytest.raises(ValueError, match=message):
        policy_config(values)


def test_vllm_settings_map_onto_trl_or_fail_naming_the_extra(monkeypatch):
    import importlib.util

    from trl import GRPOConfig

    from frpo_workflow.train import vllm_args

    assert vllm_args(None) == {}
    with pytest.raises(ValueError, match=r"vllm: unknown key\(s\) \['gpu_mem'\]"):
        policy_config({"vllm": {"gpu_mem": 0.3}})
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(RuntimeError, match=r"vllm is not installed: pip install -e '.\[vllm\]'"):
        vllm_args({"mode": "colocate"})
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))
    args = vllm_args({"gpu_memory_utilization": 0.3, "tensor_parallel_size": 2})
    assert args == {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3,
                    "vllm_tensor_parallel_size": 2}
    assert set(args) <= {f for f in GRPOConfig.__dataclass_fields__}  # TRL still has these fields


LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}


@pytest.fixture(scope="module")
def lora_aligned(tmp_path_factory, base, world):
    """A LoRA-aligned model as the align stage leaves it: an adapter folder over the base."""
    root = tmp_path_factory.mktemp("lora_aligned")
    settings = {"method": "frpo", "lam": 0.5, "lr": 1e-2, "steps": 2, "num_generations": 4, "prompts_per_step": 2,
                "max_completion_length": 6, "save_steps": 10, "lora": LORA, "rewards": ["test_brevity"]}
    run_policy_optimisation(base, world["align_prompts"], policy_config(settings), root / "out", root / "ckpt")
    assert (root / "out" / "adapter_config.json").exists()
    return root / "out"


def test_a_lora_aligned_model_loads_with_every_parameter_trainable(lora_aligned):
    model, _ = load_model_and_tokenizer(lora_aligned)
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    assert not frozen, f"merged LoRA model left {len(frozen)} parameters frozen, e.g. {frozen[:3]}"


def test_full_sft_of_a_lora_aligned_model_trains_every_parameter(tmp_path, lora_aligned, world):
    summary = run_sft(lora_aligned, world["sft_affirmative"], sft_config({**SFT, "logging_steps": 1}), tmp_path / "out",
                      tmp_path / "ckpt")
    before, after = _params(lora_aligned), _params(tmp_path / "out")
    assert all(not torch.equal(before[k], after[k]) for k in before if k.endswith("mlp.up_proj.weight"))
    assert any(h.get("grad_norm", 0) > 0 for h in summary["log_history"])


def test_full_rl_of_a_lora_aligned_model_trains_every_parameter(tmp_path, lora_aligned, world):
    settings = {"lr": 1e-2, "steps": 2, "num_generations": 4, "prompts_per_step": 2, "max_completion_length": 6,
                "save_steps": 10, "rewards": ["test_brevity"]}
    run_policy_optimisation(lora_aligned, world["rl_arithmetic"], policy_config(settings), tmp_path / "out",
                            tmp_path / "ckpt")
    before, after = _params(lora_aligned), _params(tmp_path / "out")
    assert all(not torch.equal(before[k], after[k]) for k in before if k.endswith("mlp.up_proj.weight"))


def test_a_lora_regime_on_a_lora_aligned_model_trains_its_own_adapter(tmp_path, lora_aligned, world):
    cfg = sft_config({**SFT, "lr": 1e-2, "lora": {**LORA, "target_modules": ["up_proj"]}})
    run_sft(lora_aligned, world["sft_affirmative"], cfg, tmp_path / "out", tmp_path / "ckpt")
    import json

    adapter = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert adapter["target_modules"] == ["up_proj"]  # its own adapter, not the alignment's q/v one
    before, after = _params(lora_aligned), _params(tmp_path / "out")
    assert _changed(before, after)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("up_proj" in k for k in changed)


def test_a_run_that_can_train_nothing_fails_naming_it(tmp_path, base, world):
    """Frozen parameters under gradient checkpointing (the presets') log grad_norm 0 and would save the
    input unchanged; the run fails instead, and leaves no output."""
    from frpo_workflow.train import NothingTrained

    class Freeze(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            model.requires_grad_(False)

    with pytest.raises(NothingTrained, match="gradient norm 0 at every logged step"):
        run_sft(base, world["sft_affirmative"], sft_config({**SFT, "logging_steps": 1, "gradient_checkpointing": True}),
                tmp_path / "out",
                tmp_path / "ckpt", callbacks=[Freeze()])
    assert not (tmp_path / "out").exists()

"""A rehearsal's config (every preset rewritten onto stand-ins and shrunk, still a valid study), its stand-in
models (the original's class and tokenizer, shrunk, random) and its verdict on a study's outputs."""

import copy
import json
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from frpo_workflow.plan import check_config, method_keys, method_settings, regime_settings
from frpo_workflow.rehearsal import (MOVED, build_stand_in, check_study, rehearsal_config, stand_in_marker,
                                     switch)

ROOT = Path(__file__).parents[2]
SCHEMA = str(ROOT / "workflow" / "schemas" / "config.schema.yaml")
PAPER = ["safety-qwen2.5-7b", "safety-mistral-7b", "math-qwen2.5-math-7b"]


def preset(name: str) -> dict:
    cfg = yaml.safe_load((ROOT / "workflow" / "presets" / f"{name}.yaml").read_text())
    validate(cfg, SCHEMA)
    return cfg


def judge_specs(cfg):
    specs = [*cfg["align"]["defaults"].get("rewards", []),
             *[m["judge"] for m in cfg["evaluate"]["metrics"].values()],
             *[j for r in cfg["finetune"]["regimes"].values() for j in r.get("rewards", [])]]
    return [s for s in specs if isinstance(s, dict)]


@pytest.mark.parametrize("name", PAPER)
def test_a_preset_rehearses_on_stand_ins_shrunk_and_still_valid(name):
    real = preset(name)
    cfg, summary = rehearsal_config(real)
    validate(copy.deepcopy(cfg), SCHEMA)
    check_config(cfg)
    results = real["results_dir"] + "-rehearsal"
    assert cfg["results_dir"] == results and cfg["run_name"] == real["run_name"] + "-rehearsal"
    for model in cfg["models"].values():
        assert model["source"] == "local" and model["path"].startswith(f"{results}/stand_ins/")
    for spec in judge_specs(cfg):
        assert spec["model"].startswith(f"{results}/stand_ins/") and "load_in_4bit" not in spec
    assert {Path(m["path"]).name for m in cfg["models"].values()} <= set(summary["stand_ins"])
    assert cfg["launch"]["accelerate_config"] == "cpu" and cfg["launch"]["num_processes"] == 1
    assert all(r["gpu"] == 0 for r in cfg["resources"].values())
    lambdas = real["align"]["frpo"]["lambdas"]
    assert cfg["align"]["frpo"]["lambdas"] == [lambdas[0], lambdas[-1]]
    assert len(method_keys(cfg)) == 3 and len(cfg["align"]["seeds"]) == len(cfg["finetune"]["seeds"]) == 1
    for method in method_keys(cfg):
        s = method_settings(cfg, method)
        assert s["steps"] == 4 and "epochs" not in s and "vllm" not in s and not s.get("bf16")
        assert s["num_generations"] <= 4 and s["max_completion_length"] <= 16 and s["lr"] == 1e-3
        assert s["lora"] == {**real["align"]["defaults"]["lora"], "r": 8}  # LoRA kept, its rank shrunk
    if "per_lambda" in real["align"]["frpo"]:  # a kept λ keeps its own β
        kept = cfg["align"]["frpo"]["lambdas"][-1]
        assert method_settings(cfg, f"frpo-l{kept:g}")["beta"] == method_settings(real, f"frpo-l{kept:g}")["beta"]
    for regime in cfg["finetune"]["regimes"]:
        _, _, s = regime_settings(cfg, regime, 0)
        assert s["steps"] == 4 and "epochs" not in s and s.get("batch_size", 4) <= 4
        assert ("lora" in s) == ("lora" in real["finetune"]["regimes"][regime])  # full stays full
    for name_, spec in cfg["datasets"].items():
        if spec["type"] not in ("heldout", "mixture"):
            assert spec["limit"] <= 32, name_
    assert any("lambdas" in line for line in summary["changes"])


def test_a_rehearsal_is_the_same_in_every_job():
    cfg = preset("safety-qwen2.5-7b")
    assert rehearsal_config(cfg) == rehearsal_config(copy.deepcopy(cfg))


def test_hub_rows_from_a_local_file_keep_the_mapping_and_filters():
    cfg = preset("safety-qwen2.5-7b")
    cfg["rehearsal"]["data_files"] = {"wildjailbreak_harmful": "rows/wildjailbreak.tsv", "alpaca": "rows/alpaca.json"}
    out, _ = rehearsal_config(cfg)
    wjb = out["datasets"]["wildjailbreak_harmful"]
    assert (wjb["name"], wjb["data_files"], wjb["split"]) == ("csv", "rows/wildjailbreak.tsv", "train")
    assert wjb["options"]["delimiter"] == "\t" and wjb["filters"] == {"data_type": "adversarial_harmful"}
    alpaca = out["datasets"]["alpaca"]
    assert alpaca["name"] == "json" and "options" not in alpaca and alpaca["prompt_template"].startswith("###")
    cfg["rehearsal"]["data_files"] = {"alpaca": "rows/alpaca.xlsx"}
    with pytest.raises(ValueError, match=r"rehearsal.data_files.alpaca: rows/alpaca.xlsx: unknown suffix"):
        rehearsal_config(cfg)


def test_hub_datasets_without_a_file_stream_their_first_rows():
    out, _ = rehearsal_config(preset("math-qwen2.5-math-7b"))
    assert out["datasets"]["math500"]["stream"] == {"take": 32, "buffer_size": 1, "seed": 0}
    assert out["datasets"]["math"]["stream"]["take"] == 640  # filtered after the take: more streamed
    assert out["datasets"]["opencodeinstruct"]["stream"]["take"] == 640


@pytest.mark.parametrize("value, expected", [(True, True), ("true", True), ("False", False), (0, False), ("yes", True)])
def test_the_switch_reads_the_command_line(value, expected):
    assert switch(value, "rehearse") is expected


def test_a_bad_switch_names_the_key():
    with pytest.raises(ValueError, match="config key rehearse: expected true or false, got 'maybe'"):
        switch("maybe", "rehearse")


def test_stand_in_markers():
    assert stand_in_marker("Qwen/Qwen2.5-7B-Instruct") == "Qwen--Qwen2.5-7B-Instruct"
    assert stand_in_marker("org/name", "abc") == "org--name@abc"
    assert stand_in_marker("/models/qwen").startswith("local--")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    from paper_sources import build_hub_cache

    return build_hub_cache(tmp_path_factory.mktemp("hf"))


SIZES = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64}


@pytest.mark.parametrize("repo, architecture, grouped", [
    ("Qwen/Qwen2.5-7B-Instruct", "Qwen2ForCausalLM", True),
    ("mistralai/Mistral-7B-Instruct-v0.1", "MistralForCausalLM", True),
    ("allenai/Llama-3.1-8B-Instruct-RM-RB2", "LlamaForSequenceClassification", True),
    ("cais/HarmBench-Llama-2-13b-cls", "LlamaForCausalLM", False),
    ("qylu4156/strongreject-15k-v1", "GemmaForCausalLM", True),  # an adapter repo: its base's class
])
def test_a_stand_in_has_its_original_s_class_and_tokenizer(tmp_path, hub, monkeypatch, repo, architecture, grouped):
    import transformers

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    summary = build_stand_in(repo, None, tmp_path / "s", SIZES, log=lambda _: None)
    assert summary["architecture"] == architecture and summary["original"]["hidden_size"] >= 2048
    config = transformers.AutoConfig.from_pretrained(tmp_path / "s")
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (32, 2, 4)
    assert (config.num_key_value_heads < 4) == grouped  # grouped-query attention stays grouped
    model = getattr(transformers, architecture).from_pretrained(tmp_path / "s")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "s")
    assert model.get_input_embeddings().num_embeddings >= len(tokenizer)
    assert json.loads((tmp_path / "s" / "stand_in.json").read_text())["source"] == repo


def test_a_missing_source_names_what_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"org/absent@main: its config.json and tokenizer are not in the local"):
        build_stand_in("org/absent", None, tmp_path / "s", SIZES)


def state(stage, kl=None, signal=True, **metrics):
    return {"stage": stage, "model": "m", "method": "grpo", "align_seed": 0, "regime": "sft" if stage == "finetuned"
            else None, "seed": 0 if stage == "finetuned" else None,
            "metrics": {**metrics, **({"kl_to_reference": kl} if kl is not None else {})},
            **({"train": {"learning_signal": signal}} if stage != "base" else {})}


MODEL_JUDGE = {"set": "benign", "judge": {"name": "reward_model", "model": "x"}}
RULE_JUDGE = {"set": "harmful", "judge": "refusal"}


def test_a_study_whose_models_moved_and_judges_read_their_input_passes():
    states = [state("base", rm=0.5, refusal=0.0), state("aligned", 0.2, rm=0.6, refusal=0.0),
              state("finetuned", 0.3, rm=0.4, refusal=0.0)]
    problems, notes = check_study(states, {"rm": MODEL_JUDGE, "refusal": RULE_JUDGE})
    assert problems == [] and notes == ["evaluate.metrics.refusal: 0.0 in every one of 3 states (a rule-based "
                                        "judge on a random model's text)"]


def test_a_fine_tune_that_did_not_move_fails_the_rehearsal():
    states = [state("base", rm=0.5), state("aligned", 0.2, rm=0.6), state("finetuned", 0.0, rm=0.4),
              state("finetuned", MOVED / 10, rm=0.3)]
    problems, _ = check_study(states, {"rm": MODEL_JUDGE})
    assert len(problems) == 2 and all("training did not move the model" in p for p in problems)
    assert problems[0].startswith("finetuned/m/grpo/seed0/sft/seed0: KL to its parent is 0.0")


def test_no_learning_signal_is_a_note_not_a_failure():
    states = [state("base", rm=0.5), state("finetuned", 0.0, signal=False, rm=0.4)]
    problems, notes = check_study(states, {"rm": MODEL_JUDGE})
    assert problems == [] and "no learning signal" in notes[0]


def test_a_graded_judge_constant_over_every_state_fails_and_a_missing_metric_fails():
    states = [state("base", rm=0.5), state("aligned", 0.2, rm=0.5), state("finetuned", 0.3, rm=0.5)]
    problems, _ = check_study(states, {"rm": MODEL_JUDGE, "absent": MODEL_JUDGE})
    assert problems == ["evaluate.metrics.rm: 0.5 in every one of 3 states",
                        "evaluate.metrics.absent: no value in any state's metrics.json"]
    states = [state("base", rm=1.0), state("aligned", 0.2, rm=1.0)]
    problems, notes = check_study(states, {"rm": MODEL_JUDGE})
    assert problems == [] and "one verdict for every prompt" in notes[0]

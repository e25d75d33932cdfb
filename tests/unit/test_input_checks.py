"""The checks that catch a bad input before any model job, one by one (tests/workflow/test_bad_inputs.py tries
them through Snakemake, as a user would).

Fails, for example, when reward weights of the wrong length, negative or text pass the DAG build, when a
LoRA target that names no module of the model passes, when an error names no config key (or names the
defaults where a per-λ layer set the value), when a JSON NaN becomes the text "nan", when a file that is
not UTF-8 fails without its line, or when `regimes: {}` in an overlay changes nothing.
"""

import io
import json
import os
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from frpo_workflow import model_files, plan, preflight
from frpo_workflow.data import loaders, mapping, sources
from frpo_workflow.settings import SettingError, policy_config, sft_config

ROOT = Path(__file__).parents[2]
SCHEMA = str(ROOT / "workflow" / "schemas" / "config.schema.yaml")


def e2e() -> dict:
    cfg = yaml.safe_load((ROOT / "tests" / "configs" / "e2e.yaml").read_text())
    validate(cfg, SCHEMA)
    return cfg


def refused(cfg: dict) -> str:
    with pytest.raises(ValueError) as err:
        plan.check_config(cfg)
    return str(err.value)


# ---- training settings --------------------------------------------------------------------------------

@pytest.mark.parametrize("weights, message", [
    ([1.0], "1 weight for 2 rewards"),
    ([1.0, -0.5], "-0.5 in [1.0, -0.5]"),
    (["a", "b"], "'a' in ['a', 'b']"),
    ([0, 0], "every weight is 0"),
    ([1.0, float("nan")], "nan in"),
])
def test_reward_weights_are_one_number_per_reward(weights, message):
    with pytest.raises(SettingError, match="reward_weights") as err:
        policy_config({"rewards": ["safety", "helpfulness"], "reward_weights": weights})
    assert message in str(err.value) and "expected one number >= 0 per reward (safety, helpfulness)" in str(err.value)
    policy_config({"rewards": ["safety", "helpfulness"], "reward_weights": [1, 0.5]})


@pytest.mark.parametrize("lora, field", [({"r": 0}, "lora.r"), ({"r": 2.5}, "lora.r"), ({"lora_alpha": 0}, "lora.lora_alpha"),
                                         ({"lora_dropout": 1}, "lora.lora_dropout"),
                                         ({"target_modules": []}, "lora.target_modules")])
def test_lora_values_peft_cannot_train_with_are_refused(lora, field):
    with pytest.raises(SettingError) as err:
        sft_config({"lora": lora})
    assert err.value.field == field


def test_a_group_needs_two_completions():
    with pytest.raises(SettingError, match="num_generations: 1; a group needs at least 2 completions"):
        policy_config({"num_generations": 1})


def test_the_error_names_the_layer_that_set_the_value():
    cfg = e2e()
    cfg["align"]["frpo"]["per_lambda"] = {"1": {"reward_weights": [1.0]}}
    assert refused(cfg).startswith("config key align.frpo.per_lambda.1.reward_weights: 1 weight for 2 rewards")
    cfg = e2e()
    cfg["finetune"]["regimes"]["rl-arithmetic"]["lora"] = {"r": 0}
    assert refused(cfg).startswith("config key finetune.regimes.rl-arithmetic.lora.r: 0")


def test_bf16_without_gpus_is_refused():
    cfg = e2e()
    cfg["align"]["frpo"]["settings"] = {"bf16": True}
    assert refused(cfg).startswith("config key align.frpo.settings.bf16: true, but resources.train.gpu is 0")
    cfg["resources"]["train"]["gpu"] = 1
    cfg["launch"] = {**cfg["launch"], "accelerate_config": "single_gpu"}
    plan.check_config(cfg)


def test_a_string_judge_takes_no_options():
    cfg = e2e()
    cfg["align"]["defaults"]["rewards"] = [{"name": "safety", "threshold": 0.5}, "helpfulness"]
    assert refused(cfg).startswith("config key align.defaults.rewards (grpo): judge 'safety'")


# ---- the study as a whole -----------------------------------------------------------------------------

def test_a_metric_needs_its_set_among_the_evaluation_sets():
    cfg = e2e()
    del cfg["evaluate"]["sets"]["task"]
    assert "evaluate.metrics.task_accuracy.set: 'task' is not in evaluate.sets (harmful, benign)" in refused(cfg)


@pytest.mark.parametrize("results", ["", ".", "..", "./"])
def test_results_dir_is_not_the_working_directory(results):
    cfg = e2e()
    cfg["results_dir"] = results
    assert refused(cfg).startswith(f"config key results_dir: {results!r} is the working directory")


def test_cpu_ddp_gets_no_more_processes_than_cores():
    cfg = e2e()
    cfg["launch"] = {"accelerate_config": "cpu_ddp", "num_processes": (os.cpu_count() or 1) + 1, "warm_start": True}
    assert refused(cfg).startswith("config key launch.num_processes:")
    cfg["launch"]["num_processes"] = 2
    plan.check_config(cfg)


def test_an_empty_mapping_in_an_overlay_empties_and_null_drops_an_entry():
    base = e2e()
    merged = plan.apply_overlays(plan._merged(base, {"finetune": {"regimes": {}}}), [{"finetune": {"regimes": {}}}])
    assert merged["finetune"]["regimes"] == {}
    assert refused(merged).startswith("config key finetune.regimes: no regime left")
    layers = [{"finetune": {"regimes": {}}}, {"finetune": {"regimes": {"mine": {"type": "sft", "dataset": "sft_affirmative"}}}}]
    merged = plan.apply_overlays(plan._merged(plan._merged(base, layers[0]), layers[1]), layers)
    assert list(merged["finetune"]["regimes"]) == ["mine"]
    drop = [{"finetune": {"regimes": {"rl-arithmetic": None}}}, {"evaluate": {"metrics": {"over_refusal": None}}}]
    merged = plan.apply_overlays(plan._merged(plan._merged(base, drop[0]), drop[1]), drop)
    assert list(merged["finetune"]["regimes"]) == ["sft-affirmative"]
    assert "over_refusal" not in merged["evaluate"]["metrics"] and "task_accuracy" in merged["evaluate"]["metrics"]


def test_a_target_names_a_state_of_the_config():
    cfg = e2e()
    plan.check_state(cfg, {"model": "tiny", "method": "grpo", "align_seed": "0", "regime": "sft-affirmative", "seed": "0"})
    for wildcards, message in [({"align_seed": "7"}, "align_seed 7 is not in align.seeds [0]"),
                               ({"seed": "3"}, "seed 3 is not in finetune.seeds [0]"),
                               ({"regime": "nope"}, "regime 'nope' is not in finetune.regimes"),
                               ({"method": "frpo-l5"}, "method 'frpo-l5' is not in align.frpo.lambdas")]:
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            plan.check_state(cfg, wildcards)


def test_a_whole_float_is_not_an_integer():
    cfg = e2e()
    cfg["align"]["seeds"] = [1.0]
    cfg["align"]["defaults"]["steps"] = 3.0
    errors = plan.schema_errors(cfg, SCHEMA, strict=True).splitlines()
    assert errors == ["config key align.defaults.steps: 3.0 is not an integer (write 3)",
                      "config key align.seeds.0: 1.0 is not an integer (write 1)"]
    assert plan.schema_errors(cfg, SCHEMA) == ""  # what JSON Schema alone says


# ---- data: at DAG build, and in the dataset job ----------------------------------------------------------

@pytest.mark.parametrize("key, value, message", [
    ("answer_regex", "(-?\\d+", "answer_regex: not a valid regular expression (missing ), unterminated subpattern"),
    ("completion_regex", "[", "completion_regex: not a valid regular expression"),
    ("prompt_template", "Q: {question", "prompt_template: not a valid template (expected '}' before end of string"),
    ("prompt_template", "Q: question}", "prompt_template: not a valid template (Single '}'"),
    ("prompt_template", "Q: {}", "prompt_template: not a valid template ('{}' names no column"),
])
def test_regexes_and_templates_compile_at_dag_build(key, value, message):
    spec = {"type": "jsonl", "path": "x.jsonl", "kind": "task", "columns": {"answer": "a"}, key: value}
    if key != "prompt_template":
        spec["columns"]["prompt"] = "q"
    with pytest.raises(ValueError, match="^config key datasets.x." + message.replace("(", r"\(").replace(")", r"\)")):
        loaders.check_spec(spec, "config key datasets.x")


def test_json_nan_and_infinity_are_named_with_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"q": "a", "a": "1"}\n{"q": "b", "a": {"x": [1, Infinity]}}\n')
    with pytest.raises(ValueError, match=rf"^{path}: line 2: Infinity is not valid JSON \(field 'a.x\[1\]'\)"):
        sources.read_jsonl_rows(path)
    path = tmp_path / "rows.json"
    path.write_text('[{"q": "a", "a": "1"},\n {"q": "b", "a": NaN}]')
    with pytest.raises(ValueError, match=rf"^{path}: row 2: NaN is not valid JSON \(field 'a'\)"):
        sources.read_table({"type": "json", "path": str(path)})


@pytest.mark.parametrize("kind, data", [("jsonl", b'{"q": "a"}\n{"q": "caf\xe9"}\n'),
                                        ("json", b'[{"q": "a"},\n {"q": "caf\xe9"}]'),
                                        ("csv", b'q,a\nx,1\ncaf\xe9,2\n')])
def test_bytes_that_are_not_utf8_are_named_with_file_and_line(tmp_path, kind, data):
    path = tmp_path / f"rows.{kind}"
    path.write_bytes(data)
    line = 3 if kind == "csv" else 2
    with pytest.raises(ValueError, match=rf"^{path}: line {line} is not UTF-8 \(byte 0xe9 at column \d+\)"):
        sources.read_table({"type": kind, "path": str(path)})


def test_a_nan_cell_is_refused_not_turned_into_text():
    rows = [sources.Row("row 1", {"q": "a", "a": 1.0}), sources.Row("row 2", {"q": "b", "a": float("nan")})]
    with pytest.raises(ValueError, match=r"^t.parquet: row 2: column 'a' \(answer\) holds nan"):
        mapping.map_rows(rows, {"kind": "task", "columns": {"prompt": "q", "answer": "a"}}, "t.parquet", "t")


def test_a_limit_above_the_rows_is_refused_outside_a_rehearsal(monkeypatch):
    rows = [sources.Row(f"line {i}", {"q": str(i)}) for i in range(1, 4)]
    source = {"key": "eval_task", "limit": 5, "filters": {"q": ["1", "2"]}}
    with pytest.raises(ValueError, match=r"^config key datasets.eval_task.limit: 5 rows asked, but f.jsonl has 2 "
                                         r"after filters: lower the limit to at most 2"):
        mapping.select(rows, source, "f.jsonl")
    monkeypatch.setenv("FRPO_REHEARSAL", "[]")  # a rehearsal's limits are caps
    assert len(mapping.select(rows, source, "f.jsonl")) == 2


def test_a_hub_dataset_that_cannot_be_read_is_one_line_naming_its_key(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nobody/x' on the Hub (LocalEntryNotFoundError)\nmore text")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError) as err:
        sources.read_table({"type": "hf", "name": "nobody/x", "split": "test", "key": "eval_task"})
    assert str(err.value).startswith("hf:nobody/x[test]: cannot be read (ConnectionError: Couldn't reach 'nobody/x' "
                                     "on the Hub (LocalEntryNotFoundError); config key datasets.eval_task.name")
    assert "\n" not in str(err.value)


# ---- models: local folders, the hub cache, LoRA targets -----------------------------------------------

def header(names) -> bytes:
    text = json.dumps({n: {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for n in names}).encode()
    return len(text).to_bytes(8, "little") + text


def model_folder(path: Path, files=("config.json", "tokenizer.json", "model.safetensors"), names=()) -> Path:
    path.mkdir(parents=True)
    for name in files:
        (path / name).write_bytes(header(names) if name.endswith(".safetensors") else b"{}")
    return path


def test_a_local_model_folder_holds_config_tokenizer_and_weights(tmp_path):
    assert model_files.folder_problem(model_folder(tmp_path / "ok")) is None
    assert model_files.folder_problem(model_folder(tmp_path / "a", ("tokenizer.json", "model.safetensors"))) \
        .startswith("has no config.json")
    assert model_files.folder_problem(model_folder(tmp_path / "b", ("config.json", "model.safetensors"))) \
        .startswith("has no tokenizer")
    assert model_files.folder_problem(model_folder(tmp_path / "c", ("config.json", "tokenizer.json"))) \
        .startswith("has no weights")
    assert model_files.folder_problem(tmp_path / "none").startswith("is not a folder")


def test_module_names_come_from_the_weights_header_or_index(tmp_path):
    folder = model_folder(tmp_path / "m", names=["transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias",
                                                  "lm_head.weight"])
    names, where = model_files.names_in(folder)
    assert names == ["lm_head", "transformer.h.0.attn.c_attn"] and where == "its weights' header"
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"model.layers.0.mlp.up_proj.weight": "a"}}))
    assert model_files.names_in(folder)[0] == ["model.layers.0.mlp.up_proj"]
    (folder / "model.safetensors.index.json").unlink()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    names, where = model_files.names_in(folder)
    assert "model.layers.0.self_attn.q_proj" in names and where == "config.json: model_type qwen2"


def test_lora_targets_match_as_peft_matches_them():
    names = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj", "lm_head"]
    assert model_files.unmatched_targets(["q_proj", "self_attn.q_proj", "lm_head"], names) == []
    assert model_files.unmatched_targets(["c_attn", "q_proj", "proj"], names) == ["c_attn", "proj"]
    assert model_files.unmatched_targets(r".*\.(q|v)_proj", names) == []
    assert model_files.unmatched_targets(r".*\.c_attn", names) == [r".*\.c_attn"]
    assert model_files.unmatched_targets("all-linear", names) == []


def test_preflight_checks_lora_targets_against_a_local_models_weights(tmp_path):
    cfg = e2e()
    model_folder(tmp_path / "gpt", names=["transformer.h.0.attn.c_attn.weight", "transformer.h.0.mlp.c_fc.weight"])
    cfg["models"] = {"gpt": {"source": "local", "path": "gpt"}}
    cfg["align"]["defaults"]["lora"] = {"r": 4, "target_modules": ["q_proj", "c_attn"]}
    report = preflight.check(cfg, str(tmp_path))
    assert report.problems == ["config key align.defaults.lora.target_modules: ['q_proj'] match no module of models.gpt "
                               "(names from its weights' header); its modules end in: c_attn, c_fc"]
    cfg["align"]["defaults"]["lora"]["target_modules"] = ["c_attn"]
    assert preflight.check(cfg, str(tmp_path)).error() is None


def test_an_offline_run_needs_its_hub_models_and_datasets_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    cfg = e2e()
    cfg["models"] = {"m": {"source": "hf", "repo_id": "nobody/model", "revision": "v1"}}
    cfg["datasets"]["eval_task"] = {"type": "hf", "name": "nobody/data", "split": "test", "kind": "task",
                                    "columns": {"prompt": "q", "answer": "a"}}
    stream = io.StringIO()
    preflight.run(cfg, dryrun=True, base_dir=str(tmp_path), stream=stream)  # a dry run plans; it warns
    assert "models.m.repo_id: nobody/model@v1 is not in the Hugging Face cache" in stream.getvalue()
    with pytest.raises(preflight.PreflightError) as err:
        preflight.run(cfg, base_dir=str(tmp_path), stream=io.StringIO())
    assert "- datasets.eval_task.name: nobody/data is not in the Hugging Face cache" in str(err.value)
    # Cached: nothing to say.
    snapshot = tmp_path / "hub" / "models--nobody--model" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "hub" / "models--nobody--model" / "refs").mkdir()
    (tmp_path / "hub" / "models--nobody--model" / "refs" / "v1").write_text("0" * 40)
    (tmp_path / "hub" / "datasets--nobody--data").mkdir(parents=True)
    assert preflight.check(cfg, str(tmp_path)).not_cached == []


def test_the_job_checks_lora_targets_on_the_loaded_model_too():
    import torch

    from frpo_workflow.train import check_lora_targets

    model = torch.nn.Sequential()
    model.add_module("q_proj", torch.nn.Linear(2, 2))
    check_lora_targets(model, sft_config({"lora": {"target_modules": ["q_proj"]}}))
    with pytest.raises(SettingError, match=r"lora.target_modules: \['c_attn'\] match no module of the model; its "
                                           r"modules end in: q_proj"):
        check_lora_targets(model, sft_config({"lora": {"target_modules": ["c_attn"]}}))

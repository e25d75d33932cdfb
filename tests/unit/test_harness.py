"""External harnesses: spec checks, the parsers on each tool's own result format, the glue, the skip.

The fixtures in tests/fixtures/harness/ copy the shape of lm-eval 0.4.13's `simple_evaluate` results and
of EvalPlus 0.3.1's `*_eval_results.json`. The glue runs against stand-in tool modules that record what
they were called with; the last test runs the real lm-eval (when installed) on minerva_math500's own
task config over a three-problem local file and a tiny random Llama, and the real EvalPlus (when
installed) on a two-task local HumanEval+ file, both offline.
"""

import importlib.machinery
import importlib.util
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from frpo_workflow import harness
from frpo_workflow.harness import (DEFAULTS, HarnessUnavailable, check_spec, metric_name, parse_evalplus_results,
                                   parse_lm_eval_results, run_harness, settings)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "harness"
NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
BOXED = "Please reason step by step, and put your final answer within \\boxed{}."
MATH500 = {"tool": "lm_eval", "tasks": ["minerva_math500"], "num_fewshot": 0, "apply_chat_template": True,
           "system_instruction": BOXED, "max_new_tokens": 2048, "batch_size": 8, "limit": None}


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


# ---- specs -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [
    MATH500,
    {"tool": "lm_eval", "tasks": ["gsm8k", "ifeval"]},
    {"tool": "evalplus", "dataset": "mbpp"},
    {"tool": "evalplus", "dataset": "humaneval", "backend": "vllm"},
])
def test_valid_specs_pass(spec):
    check_spec(spec, "evaluate.harness.x")


@pytest.mark.parametrize("spec, message", [
    ({"tool": "lm-eval", "tasks": ["gsm8k"]}, r"evaluate.harness.x: unknown harness tool 'lm-eval'"),
    ({"tasks": ["gsm8k"]}, r"unknown harness tool None"),
    ({"tool": "lm_eval", "tasks": ["gsm8k"], "max_tokens": 512}, r"unknown key\(s\) \['max_tokens'\]"),
    ({"tool": "evalplus", "dataset": "mbpp", "max_new_tokens": 768}, r"unknown key\(s\) \['max_new_tokens'\]"),
    ({"tool": "lm_eval"}, r"lm_eval harness needs 'tasks'"),
    ({"tool": "lm_eval", "tasks": []}, r"needs 'tasks'"),
    ({"tool": "lm_eval", "tasks": "gsm8k"}, r"tasks must be a list of lm-eval task names"),
    ({"tool": "evalplus"}, r"evalplus harness needs 'dataset'"),
    ({"tool": "evalplus", "dataset": "mbpp+"}, r"dataset must be one of \['mbpp', 'humaneval'\], got 'mbpp\+'"),
    ({"tool": "evalplus", "dataset": "mbpp", "backend": "openai"}, r"backend must be one of \['hf', 'vllm'\]"),
])
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(ValueError, match=message):
        check_spec(spec, "evaluate.harness.x")


def test_settings_fill_defaults_and_keep_given_values():
    cfg = settings({"tool": "lm_eval", "tasks": ["ifeval"], "max_new_tokens": None})
    assert cfg == {**DEFAULTS["lm_eval"], "tool": "lm_eval", "tasks": ["ifeval"], "max_new_tokens": None}
    assert cfg["num_fewshot"] == 0 and cfg["apply_chat_template"] is True and cfg["batch_size"] == 8
    assert settings({"tool": "evalplus", "dataset": "mbpp"})["backend"] == "hf"


# ---- names -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("parts, expected", [
    (("lm_eval", "minerva_math500", "exact_match"), "lm_eval.minerva_math500.exact_match"),
    (("lm_eval", "gsm8k", "exact_match", "flexible-extract"), "lm_eval.gsm8k.exact_match.flexible-extract"),
    (("lm_eval", "humaneval", "pass@1", "create_test"), "lm_eval.humaneval.pass_at_1.create_test"),
    (("lm_eval", "my task", "acc,norm (x/y)"), "lm_eval.my_task.acc_norm__x_y_"),
    (("evalplus", "mbpp", "plus_pass_at_1"), "evalplus.mbpp.plus_pass_at_1"),
])
def test_metric_names_are_sanitised(parts, expected):
    assert metric_name(*parts) == expected
    assert NAME.match(expected)


# ---- lm-eval's results -----------------------------------------------------------------------------

def test_lm_eval_results_become_flat_metrics():
    metrics = parse_lm_eval_results(fixture("lm_eval_results.json"))
    assert metrics == {
        "lm_eval.minerva_math500.exact_match": 0.416,
        "lm_eval.minerva_math500.exact_match_stderr": 0.022069570853418953,
        "lm_eval.minerva_math500.math_verify": 0.732,
        "lm_eval.minerva_math500.math_verify_stderr": 0.019827714391351146,
        "lm_eval.gsm8k.exact_match.strict-match": 0.7225170583775588,
        "lm_eval.gsm8k.exact_match_stderr.strict-match": 0.012333447581047539,
        "lm_eval.gsm8k.exact_match.flexible-extract": 0.8453373768006065,
        "lm_eval.gsm8k.exact_match_stderr.flexible-extract": 0.009959102395829538,
        # IFEval's instruction-level accuracies have no stderr ("N/A"): left out, the values kept.
        "lm_eval.ifeval.prompt_level_strict_acc": 0.6876155268022182,
        "lm_eval.ifeval.prompt_level_strict_acc_stderr": 0.019944386293758908,
        "lm_eval.ifeval.inst_level_strict_acc": 0.7745803357314148,
        "lm_eval.ifeval.prompt_level_loose_acc": 0.722735674676525,
        "lm_eval.ifeval.prompt_level_loose_acc_stderr": 0.019263706963479364,
        "lm_eval.ifeval.inst_level_loose_acc": 0.8033573141486811,
    }
    assert all(NAME.match(name) and isinstance(v, float) for name, v in metrics.items())


def test_lm_eval_parser_skips_nan_and_non_numbers():
    results = {"results": {"t": {"alias": "t", "name": "t", "sample_len": 3, "acc,none": 1,
                                 "acc_stderr,none": float("nan"), "flag,none": True}}}
    assert parse_lm_eval_results(results) == {"lm_eval.t.acc": 1.0}


# ---- EvalPlus's results ----------------------------------------------------------------------------

def test_evalplus_results_give_base_and_plus_pass_at_1():
    # Mbpp/2 passes both; /3 passes base only; /4 fails both; /6 passes plus but not base (counts as a
    # plus failure: a plus pass needs both); /7 times out.
    metrics = parse_evalplus_results(fixture("evalplus_mbpp_eval_results.json"), "mbpp")
    assert metrics == {"evalplus.mbpp.base_pass_at_1": pytest.approx(2 / 5),
                       "evalplus.mbpp.plus_pass_at_1": pytest.approx(1 / 5)}


def _sample(base, plus):
    return {"task_id": "HumanEval/0", "solution": "", "base_status": base, "plus_status": plus,
            "base_fail_tests": [], "plus_fail_tests": []}


def test_evalplus_pass_at_1_averages_samples_within_a_task_first():
    results = {"eval": {"HumanEval/0": [_sample("pass", "pass"), _sample("pass", "fail")],
                        "HumanEval/1": [_sample("fail", "fail")]}}
    assert parse_evalplus_results(results, "humaneval") == {
        "evalplus.humaneval.base_pass_at_1": pytest.approx((1 + 0) / 2),
        "evalplus.humaneval.plus_pass_at_1": pytest.approx((0.5 + 0) / 2)}


def test_evalplus_base_only_results_have_no_plus_metric():
    results = {"eval": {"Mbpp/2": [_sample("pass", None)], "Mbpp/3": [_sample("fail", None)]}}
    assert parse_evalplus_results(results, "mbpp") == {"evalplus.mbpp.base_pass_at_1": 0.5}


@pytest.mark.parametrize("results, message", [
    ({"eval": {}}, "hold no tasks"), ({"eval": {"Mbpp/2": []}}, "task Mbpp/2 has no samples")])
def test_evalplus_incomplete_results_are_errors(results, message):
    with pytest.raises(ValueError, match=message):
        parse_evalplus_results(results, "mbpp")


# ---- a missing tool --------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, module, hint", [
    (MATH500, "lm_eval", "lm-eval is not installed: pip install -e '.[lm-eval]'"),
    ({"tool": "evalplus", "dataset": "mbpp"}, "evalplus", "evalplus is not installed: pip install -e '.[evalplus]'"),
])
def test_missing_tool_raises_harness_unavailable_with_the_pip_extra(spec, module, hint, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    with pytest.raises(HarnessUnavailable) as err:
        run_harness(spec, tmp_path / "model", "cpu", tmp_path / "out")
    assert str(err.value) == hint
    assert not (tmp_path / "out").exists()  # a skipped harness leaves nothing behind


def test_bad_spec_fails_before_the_tool_is_looked_up(tmp_path):
    with pytest.raises(ValueError, match="unknown key"):
        run_harness({**MATH500, "temperature": 0.7}, tmp_path, "cpu", tmp_path / "out")


# ---- the glue, against stand-in tools --------------------------------------------------------------

def _module(monkeypatch, name: str, **attrs) -> types.ModuleType:
    """A stand-in module in sys.modules, with a spec so `find_spec` sees it as installed."""
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(attrs)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def test_lm_eval_glue_passes_the_spec_through_and_writes_raw_results(tmp_path, monkeypatch):
    calls = {}

    def simple_evaluate(**kwargs):
        calls.update(kwargs)
        return {**fixture("lm_eval_results.json"), "samples": {"minerva_math500": [{"doc_id": 0, "resps": [["x"]]}]}}

    class TaskManager:
        def __init__(self, include_path=None):
            calls["include_path"] = include_path

    _module(monkeypatch, "lm_eval", simple_evaluate=simple_evaluate)
    _module(monkeypatch, "lm_eval.tasks", TaskManager=TaskManager)
    _module(monkeypatch, "lm_eval.utils", handle_non_serializable=str)

    metrics = run_harness({**MATH500, "include_path": "my_tasks"}, tmp_path / "model", "cuda:0", tmp_path / "out")
    assert metrics == parse_lm_eval_results(fixture("lm_eval_results.json"))
    assert calls["model"] == "hf" and calls["model_args"] == {"pretrained": str(tmp_path / "model")}
    assert calls["tasks"] == ["minerva_math500"] and calls["num_fewshot"] == 0 and calls["device"] == "cuda:0"
    assert calls["apply_chat_template"] is True and calls["system_instruction"] == BOXED
    assert calls["gen_kwargs"] == {"do_sample": False, "temperature": 0.0, "max_gen_toks": 2048}
    assert calls["batch_size"] == 8 and calls["limit"] is None and calls["include_path"] == "my_tasks"
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert "samples" not in saved and saved["results"] == fixture("lm_eval_results.json")["results"]
    assert json.loads((tmp_path / "out" / "samples_minerva_math500.jsonl").read_text()) == {"doc_id": 0, "resps": [["x"]]}

    # max_new_tokens None leaves each task's own max_gen_toks alone (greedy all the same).
    run_harness({"tool": "lm_eval", "tasks": ["ifeval"], "max_new_tokens": None}, tmp_path, "cpu", tmp_path / "o2")
    assert calls["gen_kwargs"] == {"do_sample": False, "temperature": 0.0}


def test_evalplus_glue_generates_greedily_then_reads_the_tools_result_file(tmp_path, monkeypatch):
    calls = {}

    def run_codegen(model, dataset, root, greedy, backend):
        # EvalPlus 0.3.1 names the samples file <root>/<dataset>/<model path, '/' -> '--'>_<backend>_temp_0.0.jsonl
        calls["codegen"] = dict(model=model, dataset=dataset, root=root, greedy=greedy, backend=backend)
        path = Path(root) / dataset / (model.strip("./").replace("/", "--") + f"_{backend}_temp_0.0.jsonl")
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"task_id": "Mbpp/2", "solution": "..."}) + "\n")
        return str(path)

    def evaluate(dataset, samples):
        calls["evaluate"] = dict(dataset=dataset, samples=samples)
        Path(samples.replace(".jsonl", "_eval_results.json")).write_text(
            (FIXTURES / "evalplus_mbpp_eval_results.json").read_text())

    _module(monkeypatch, "evalplus")
    _module(monkeypatch, "evalplus.codegen", run_codegen=run_codegen)
    _module(monkeypatch, "evalplus.evaluate", evaluate=evaluate)

    metrics = run_harness({"tool": "evalplus", "dataset": "mbpp"}, tmp_path / "model", "cpu", tmp_path / "out")
    assert metrics == {"evalplus.mbpp.base_pass_at_1": pytest.approx(0.4),
                       "evalplus.mbpp.plus_pass_at_1": pytest.approx(0.2)}
    assert calls["codegen"] == dict(model=str(tmp_path / "model"), dataset="mbpp", root=str(tmp_path / "out"),
                                    greedy=True, backend="hf")
    assert calls["evaluate"]["dataset"] == "mbpp" and calls["evaluate"]["samples"].startswith(str(tmp_path / "out"))


# ---- the real lm-eval, offline ---------------------------------------------------------------------

CHAT_TEMPLATE = (
    "{%- for message in messages -%}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


def _tiny_model(path: Path, chat_template: str | None = CHAT_TEMPLATE, mute: bool = False) -> Path:
    """A random two-layer Llama and a byte-level tokenizer (end of text = token 0), saved at `path`.

    `mute` zeroes the output layer: every logit ties, greedy decoding picks token 0 and stops at once.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([f"Problem: What is {a} + {a}? Solution: $\\boxed{{{2 * a}}}$" for a in range(20)] + [BOXED],
                            trainer=trainers.BpeTrainer(
                                vocab_size=300, special_tokens=["<|end|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|end|>", pad_token="<|pad|>",
                                        chat_template=chat_template)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None, tie_word_embeddings=False))
    if mute:
        torch.nn.init.zeros_(model.lm_head.weight)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.slow
def test_real_lm_eval_runs_minerva_math500_on_a_local_file(tmp_path):
    lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed: pip install -e '.[lm-eval]'")
    pytest.importorskip("math_verify", reason="minerva_math needs lm-eval's math extra")
    model = _tiny_model(tmp_path / "model")
    rows = [{"problem": f"What is {a} + {a}?", "solution": f"So it is $\\boxed{{{2 * a}}}$.", "answer": str(2 * a),
             "subject": "Algebra", "level": 1, "unique_id": f"test/algebra/{a}.json"} for a in (1, 2, 3)]
    data = tmp_path / "math500.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # minerva_math500's own config (prompt, answer extraction, metrics), pointed at the local file.
    minerva = Path(lm_eval.__file__).parent / "tasks" / "minerva_math" / "minerva_math500.yaml"
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "local.yaml").write_text(
        f"include: {minerva}\ntask: minerva_math500_local\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n")

    spec = {**MATH500, "tasks": ["minerva_math500_local"], "include_path": str(tasks), "max_new_tokens": 8,
            "batch_size": 3}
    metrics = run_harness(spec, model, "cpu", tmp_path / "out")

    task = "lm_eval.minerva_math500_local."
    assert set(metrics) == {task + m for m in ("exact_match", "exact_match_stderr", "math_verify", "math_verify_stderr")}
    assert 0.0 <= metrics[task + "exact_match"] <= 1.0 and 0.0 <= metrics[task + "math_verify"] <= 1.0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["n-shot"] == {"minerva_math500_local": 0}
    assert results["n-samples"]["minerva_math500_local"]["effective"] == 3
    assert parse_lm_eval_results(results) == metrics
    samples = [json.loads(line) for line in (tmp_path / "out" / "samples_minerva_math500_local.jsonl").open()]
    assert len(samples) == 3
    prompt, gen_kwargs = samples[0]["arguments"][0]  # lm-eval's (context, generation kwargs) request
    # Chat template with the \boxed system turn, 0-shot, greedy, the length cap honoured.
    assert prompt.startswith(f"<|system|>{BOXED}<|end|><|user|>Problem:\nWhat is 1 + 1?")
    assert prompt.endswith("<|assistant|>")
    assert gen_kwargs["do_sample"] is False and gen_kwargs["max_gen_toks"] == 8


# A two-task HumanEval+ in EvalPlus's own dataset format. A model that stops at once leaves the prompt
# (signature and docstring) as the solution: it returns None, right for `nothing` and wrong for `add`.
HUMANEVAL_PLUS = [
    {"task_id": "HumanEval/0", "prompt": 'def nothing(x):\n    """Do nothing: return None."""\n', "entry_point": "nothing",
     "canonical_solution": "    return None\n", "base_input": [[1], [2]], "plus_input": [[-3], [0]], "atol": 0,
     "contract": ""},
    {"task_id": "HumanEval/1", "prompt": 'def add(a, b):\n    """Return a + b."""\n', "entry_point": "add",
     "canonical_solution": "    return a + b\n", "base_input": [[1, 2], [3, 4]], "plus_input": [[10, -3]], "atol": 0,
     "contract": ""},
]


@pytest.mark.slow
def test_real_evalplus_runs_on_a_local_humaneval_plus_file(tmp_path):
    pytest.importorskip("evalplus", reason="evalplus is not installed: pip install -e '.[evalplus]'")
    model = _tiny_model(tmp_path / "model", chat_template=None, mute=True)
    data = tmp_path / "HumanEvalPlus.jsonl"
    data.write_text("".join(json.dumps(task) + "\n" for task in HUMANEVAL_PLUS))
    # EvalPlus reads its dataset override when first imported, so it runs in a fresh interpreter; its
    # ground-truth cache goes to the temporary folder too.
    code = ("import json, sys; from frpo_workflow.harness import run_harness; "
            "print(json.dumps(run_harness({'tool': 'evalplus', 'dataset': 'humaneval'}, sys.argv[1], 'cpu', sys.argv[2])))")
    env = {**os.environ, "HUMANEVAL_OVERRIDE_PATH": str(data), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([sys.executable, "-c", code, str(model), str(tmp_path / "out")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads(run.stdout.strip().splitlines()[-1])
    assert metrics == {"evalplus.humaneval.base_pass_at_1": 0.5, "evalplus.humaneval.plus_pass_at_1": 0.5}
    results, = (tmp_path / "out" / "humaneval").glob("*_eval_results.json")
    statuses = {t: [s["base_status"] for s in v] for t, v in json.loads(results.read_text())["eval"].items()}
    assert statuses == {"HumanEval/0": ["pass"], "HumanEval/1": ["fail"]}


def test_evaluate_skips_a_harness_that_is_not_installed_and_keeps_the_others(monkeypatch, tmp_path, caplog):
    import logging

    from frpo_workflow.cli import evaluate as cli

    def fake(spec, weights, device, out):
        if spec["tool"] == "evalplus":
            raise harness.HarnessUnavailable("evalplus is not installed: pip install -e '.[evalplus]'")
        return {"lm_eval.minerva_math500.math_verify": 0.5}

    monkeypatch.setattr(cli, "run_harness", fake)
    monkeypatch.setattr(cli, "resolve_model_path", lambda d: str(d))
    log = logging.getLogger("test")
    with caplog.at_level(logging.WARNING):
        metrics = cli.run_harnesses([{"tool": "lm_eval", "tasks": ["minerva_math500"]}, {"tool": "evalplus", "dataset": "mbpp"}],
                                    str(tmp_path), None, None, "cpu", tmp_path, log)
    assert metrics == {"lm_eval.minerva_math500.math_verify": 0.5}
    assert "pip install -e '.[evalplus]'" in caplog.text

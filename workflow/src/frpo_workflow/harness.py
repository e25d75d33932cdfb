"""External benchmark harnesses run on a saved model folder, their scores returned as flat metrics.

A spec from config names its tool; every other key has a default (`DEFAULTS`):

    {"tool": "lm_eval", "tasks": ["minerva_math500"], "num_fewshot": 0, "apply_chat_template": true,
     "system_instruction": "Please reason step by step, and put your final answer within \\boxed{}.",
     "max_new_tokens": 2048, "batch_size": 8, "limit": null, "include_path": null}
    {"tool": "evalplus", "dataset": "mbpp", "backend": "hf"}

`run_harness(spec, model_dir, device, out_dir)` runs the tool, writes its raw results into `out_dir` and
returns metrics named `<tool>.<task>.<metric>`: `lm_eval.minerva_math500.exact_match`,
`lm_eval.gsm8k.exact_match.flexible-extract` (lm-eval's filter, when not "none"),
`evalplus.mbpp.plus_pass_at_1`. The tools are optional extras, imported only when a spec runs; a missing
one raises `HarnessUnavailable`, whose message names the extra, so the caller can skip with it.

The parsers are pure functions over each tool's own result format, tested without the tools.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path


class HarnessUnavailable(RuntimeError):
    """The spec's tool is not installed; the message says which pip extra brings it."""


# Keys each tool takes, with their defaults; `None` means "the tool's or the task's own".
DEFAULTS = {
    "lm_eval": {
        "tasks": None,                # lm-eval task names, e.g. minerva_math500, gsm8k, ifeval (required)
        "num_fewshot": 0,             # the paper evaluates instruct-style, 0-shot; None = each task's own
        "apply_chat_template": True,  # prompts go through the tokenizer's chat template
        "system_instruction": None,   # a system turn before each prompt (the \boxed instruction for MATH500)
        "max_new_tokens": 2048,       # lm-eval's max_gen_toks, replacing each task's own; None keeps the task's
        "batch_size": 8,              # an int, or "auto" for lm-eval's search
        "limit": None,                # the first N documents per task (or a fraction < 1), for smoke runs only
        "include_path": None,         # a folder of extra task YAMLs, e.g. a task over a local data file
    },
    # EvalPlus 0.3.1 decodes greedily one prompt at a time with its own 768-token cap: no batch or
    # length setting reaches its generator, so none is offered here.
    "evalplus": {
        "dataset": None,  # "mbpp" (MBPP+) or "humaneval" (HumanEval+) (required)
        "backend": "hf",  # EvalPlus's generator: "hf" (transformers) or "vllm" (needs vllm installed)
    },
}
REQUIRED = {"lm_eval": ("tasks",), "evalplus": ("dataset",)}
CHOICES = {"lm_eval": {}, "evalplus": {"dataset": ("mbpp", "humaneval"), "backend": ("hf", "vllm")}}
# The importable module of each tool and the pip extra (pyproject.toml) that installs it.
PACKAGES = {"lm_eval": ("lm_eval", "lm-eval"), "evalplus": ("evalplus", "evalplus")}


def check_spec(spec: dict, where: str) -> None:
    """A spec's tool, keys, required keys and choices, checked without importing the tool (config time)."""
    tool = spec.get("tool")
    if tool not in DEFAULTS:
        raise ValueError(f"{where}: unknown harness tool {tool!r}; known tools: {sorted(DEFAULTS)}")
    unknown = sorted(set(spec) - set(DEFAULTS[tool]) - {"tool"})
    if unknown:
        raise ValueError(f"{where}: {tool} harness: unknown key(s) {unknown}; known: {sorted(DEFAULTS[tool])}")
    for key in REQUIRED[tool]:
        if not spec.get(key):
            raise ValueError(f"{where}: {tool} harness needs {key!r}")
    for key, allowed in CHOICES[tool].items():
        if key in spec and spec[key] not in allowed:
            raise ValueError(f"{where}: {key} must be one of {list(allowed)}, got {spec[key]!r}")
    if tool == "lm_eval":
        tasks = spec["tasks"]
        if not isinstance(tasks, list) or not all(isinstance(t, str) and t for t in tasks):
            raise ValueError(f"{where}: tasks must be a list of lm-eval task names, got {tasks!r}")


def settings(spec: dict) -> dict:
    """The spec with every default filled in (checked first)."""
    check_spec(spec, "harness spec")
    return {**DEFAULTS[spec["tool"]], **spec}


def run_harness(spec: dict, model_dir: str | Path, device: str, out_dir: str | Path) -> dict[str, float]:
    """Run the spec's tool on the model saved in `model_dir`; raw results go to `out_dir`."""
    cfg = settings(spec)
    module, extra = PACKAGES[cfg["tool"]]
    if importlib.util.find_spec(module) is None:
        raise HarnessUnavailable(f"{extra} is not installed: pip install -e '.[{extra}]'")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return RUNNERS[cfg["tool"]](cfg, Path(model_dir), device, out_dir)


def metric_name(*parts: str) -> str:
    """Parts joined by '.'; '@' read out as '_at_' (pass@1 -> pass_at_1), any other character but letters,
    digits, '_', '.' and '-' made '_', so every tracker and file format takes the name as it is."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", ".".join(parts).replace("@", "_at_"))


# ---- lm-evaluation-harness -------------------------------------------------------------------------

def _run_lm_eval(cfg: dict, model_dir: Path, device: str, out_dir: Path) -> dict[str, float]:
    """lm-eval's `simple_evaluate` with its HF backend on the local folder; greedy whatever the task says."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    gen_kwargs = {"do_sample": False, "temperature": 0.0}
    if cfg["max_new_tokens"] is not None:
        gen_kwargs["max_gen_toks"] = cfg["max_new_tokens"]
    results = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(model_dir)}, tasks=list(cfg["tasks"]),
        num_fewshot=cfg["num_fewshot"], batch_size=cfg["batch_size"], device=device, limit=cfg["limit"],
        apply_chat_template=cfg["apply_chat_template"], system_instruction=cfg["system_instruction"],
        gen_kwargs=gen_kwargs, task_manager=TaskManager(include_path=cfg["include_path"]), log_samples=True)
    # The per-document answers, one JSON line each, beside the aggregate (as lm-eval's own CLI splits them).
    for task, rows in results.pop("samples", {}).items():
        lines = (json.dumps(row, default=handle_non_serializable, ensure_ascii=False) + "\n" for row in rows)
        (out_dir / f"samples_{task}.jsonl").write_text("".join(lines))
    (out_dir / "results.json").write_text(
        json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False) + "\n")
    return parse_lm_eval_results(results)


def parse_lm_eval_results(results: dict) -> dict[str, float]:
    """Flat metrics from lm-eval's results (`simple_evaluate`'s return or its results JSON).

    Each `results[task]` maps "metric,filter" to a value ("exact_match,none": 0.73,
    "exact_match_stderr,none": 0.02); the filter is kept in the name unless it is "none". Entries that are
    not numbers (alias, a stderr of "N/A") and NaNs are left out.
    """
    metrics = {}
    for task, values in results["results"].items():
        for key, value in values.items():
            if "," not in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isnan(value):
                continue
            metric, _, flt = key.partition(",")
            parts = (metric,) if flt == "none" else (metric, flt)
            metrics[metric_name("lm_eval", task, *parts)] = float(value)
    return metrics


# ---- EvalPlus --------------------------------------------------------------------------------------

def _run_evalplus(cfg: dict, model_dir: Path, device: str, out_dir: Path) -> dict[str, float]:
    """EvalPlus's codegen then evaluate entry points (0.3.1), greedy; samples and results land in `out_dir`.

    EvalPlus places the model itself (its HF backend takes the first GPU if there is one, else the CPU;
    vLLM takes the visible GPUs), so `device` is not passed on. Its datasets download on first use.
    """
    from evalplus.codegen import run_codegen
    from evalplus.evaluate import evaluate

    samples = run_codegen(model=str(model_dir), dataset=cfg["dataset"], root=str(out_dir), greedy=True,
                          backend=cfg["backend"])
    evaluate(dataset=cfg["dataset"], samples=samples)
    result_path = Path(samples.removesuffix(".jsonl") + "_eval_results.json")
    return parse_evalplus_results(json.loads(result_path.read_text()), cfg["dataset"])


def parse_evalplus_results(results: dict, dataset: str) -> dict[str, float]:
    """pass@1 on the base tests and on base + plus tests, from EvalPlus's eval_results JSON.

    `results["eval"][task_id]` lists one entry per sample with `base_status` and `plus_status`
    ("pass", "fail", "timeout" or null when only base tests ran). pass@1 is the mean over tasks of each
    task's share of passing samples (the unbiased estimator at k = 1); a "plus" pass needs both.
    Tasks with no samples are an error: EvalPlus itself refuses to score an incomplete set.
    """
    per_task = results["eval"]
    if not per_task:
        raise ValueError(f"EvalPlus results for {dataset} hold no tasks")
    base, plus = [], []
    for task_id, samples in per_task.items():
        if not samples:
            raise ValueError(f"EvalPlus results for {dataset}: task {task_id} has no samples")
        base.append(sum(s["base_status"] == "pass" for s in samples) / len(samples))
        plus.append(sum(s["base_status"] == s["plus_status"] == "pass" for s in samples) / len(samples))
    metrics = {metric_name("evalplus", dataset, "base_pass_at_1"): sum(base) / len(base)}
    if any(s.get("plus_status") is not None for samples in per_task.values() for s in samples):
        metrics[metric_name("evalplus", dataset, "plus_pass_at_1")] = sum(plus) / len(plus)
    return metrics


RUNNERS = {"lm_eval": _run_lm_eval, "evalplus": _run_evalplus}

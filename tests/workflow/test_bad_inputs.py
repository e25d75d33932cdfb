"""Bad inputs, tried as a new user would: each is caught before any model job, with one line naming the
config key (and the file and line where the input is a file) and what was expected.

Every case is an overlay over tests/configs/e2e.yaml (with its files, targets and environment), and says
where it must be caught:

- `dag`: at DAG build, so `snakemake -n` already fails, naming the key (what a dry run only warns about, a
  hub repo missing from the cache while HF_HUB_OFFLINE is set, stops the real run at its DAG build);
- `dataset`: in the dataset job that reads the file, before any model job (a dry run passes; the real
  run of the dataset jobs fails with the file and line in its log);
- `snakemake`: by Snakemake itself, before the Snakefile is read (its own message; see `UPSTREAM`).

`python tests/workflow/test_bad_inputs.py [--root CHECKOUT]` prints the table (case, where caught, first
line of the message) for this checkout or another one (the issue's "before" column came from the commit
before these checks, run this way).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
E2E = ROOT / "tests" / "configs" / "e2e.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
ENV.pop("MLFLOW_TRACKING_URI", None)

GOOD_ROWS = b'{"question": "What is 2 + 2?", "answer": "4"}\n{"question": "What is 3 + 3?", "answer": "6"}\n'
NAN_ROWS = b'{"question": "What is 2 + 2?", "answer": "4"}\n{"question": "What is 3 + 3?", "answer": NaN}\n'
LATIN1_ROWS = b'{"question": "What is 2 + 2?", "answer": "4"}\n{"question": "Caf\xe9: 3 + 3?", "answer": "6"}\n'
# A tiny Llama-shaped folder: what a DAG-build check reads (config, tokenizer files, weights' names).
LLAMA_CONFIG = json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}).encode()
TOKENIZER = {"tokenizer.json": b"{}", "tokenizer_config.json": b"{}"}


def _header(names: list[str]) -> bytes:
    """A safetensors file holding only a header (tensor names, shapes, offsets) and zero-size tensors."""
    header = json.dumps({n: {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for n in names}).encode()
    return len(header).to_bytes(8, "little") + header


WEIGHTS = {"model.safetensors": _header([f"model.layers.0.self_attn.{p}.weight" for p in ("q_proj", "k_proj")])}


def task_set(path: str, **extra) -> dict:
    """An overlay replacing the e2e study's task evaluation set by a JSONL file."""
    return {"datasets": {"eval_task": {"type": "jsonl", "path": path, "kind": "task", "shuffle": False,
                                       "columns": {"prompt": "question", "answer": "answer"}, **extra}}}


@dataclass
class Case:
    name: str
    overlay: dict | bytes | None  # YAML text when bytes
    expect: str  # dag | dataset | snakemake
    message: str  # what the first line of the error must contain (key, file, line)
    files: dict = field(default_factory=dict)  # path -> bytes, written into the working folder
    targets: tuple = ()
    env: dict = field(default_factory=dict)
    issue: str = ""  # where the issue found it: model job, silent, unclear


CASES = [
    # -- training settings: failed only inside a model job
    Case("reward_weights of the wrong length", {"align": {"defaults": {"reward_weights": [1.0]}}}, "dag",
         "config key align.defaults.reward_weights: 1 weight for 2 rewards", issue="model job"),
    Case("reward_weights negative", {"align": {"defaults": {"reward_weights": [1.0, -0.5]}}}, "dag",
         "config key align.defaults.reward_weights: -0.5", issue="model job (trained silently)"),
    Case("reward_weights strings", {"align": {"defaults": {"reward_weights": ["a", "b"]}}}, "dag",
         "config key align.defaults.reward_weights: 'a'", issue="model job"),
    Case("lora r 0", {"align": {"defaults": {"lora": {"r": 0}}}}, "dag",
         "config key align.defaults.lora.r: 0", issue="model job"),
    Case("lora target_modules absent from the model",
         {"align": {"defaults": {"lora": {"r": 4, "target_modules": ["c_attn"]}}}}, "dag",
         "config key align.defaults.lora.target_modules: ['c_attn'] match no module of models.tiny",
         issue="model job"),
    Case("num_generations 1", {"align": {"defaults": {"num_generations": 1}}}, "dag",
         "config key align.defaults.num_generations: 1", issue="model job"),
    Case("num_generations 1 in an rl regime", {"finetune": {"regimes": {"rl-arithmetic": {"num_generations": 1}}}},
         "dag", "config key finetune.regimes.rl-arithmetic.num_generations: 1", issue="model job"),
    Case("local model path that does not exist", {"models": {"tiny": {"source": "local", "path": "no/such/model"}}},
         "dag", "models.tiny.path: file not found: no/such/model", issue="model job"),
    Case("local model folder without config.json", {"models": {"tiny": {"source": "local", "path": "model"}}},
         "dag", "models.tiny.path: model has no config.json",
         files={**{f"model/{k}": v for k, v in TOKENIZER.items()}, **{f"model/{k}": v for k, v in WEIGHTS.items()}},
         issue="model job"),
    Case("local model folder without a tokenizer", {"models": {"tiny": {"source": "local", "path": "model"}}},
         "dag", "models.tiny.path: model has no tokenizer",
         files={"model/config.json": LLAMA_CONFIG, **{f"model/{k}": v for k, v in WEIGHTS.items()}},
         issue="model job"),
    Case("hub model not in the cache, offline",
         {"models": {"tiny": {"source": "hf", "repo_id": "nobody/no-such-model"}}}, "dag",
         "models.tiny.repo_id: nobody/no-such-model is not in the Hugging Face cache", env={"HF_HOME": "hf"},
         issue="model job"),
    Case("judge option on a string judge",
         {"align": {"defaults": {"rewards": [{"name": "safety", "threshold": 0.5}, "helpfulness"]}}}, "dag",
         "judge 'safety' takes no options", issue="model job"),
    # -- accepted silently
    Case("metric whose set is not in evaluate.sets", {"evaluate": {"sets": {"harmful": "eval_harmful",
                                                                            "benign": "eval_benign"}}},
         "dag", "config key evaluate.metrics.task_accuracy.set: 'task' is not in evaluate.sets", issue="silent"),
    Case("bf16 on CPU", {"align": {"defaults": {"bf16": True}}}, "dag",
         "config key align.defaults.bf16: true, but resources.train.gpu is 0", issue="silent"),
    Case("cpu_ddp with 64 processes", {"launch": {"accelerate_config": "cpu_ddp", "num_processes": 64}}, "dag",
         "config key launch.num_processes: 64 processes", issue="silent"),
    Case("finetune.regimes {} in an overlay", {"finetune": {"regimes": {}}}, "dag",
         "config key finetune.regimes: no regime left", issue="silent"),
    Case("results_dir empty", {"results_dir": ""}, "dag", "config key results_dir: ''", issue="silent"),
    Case("JSON NaN answer", task_set("nan.jsonl"), "dataset", "nan.jsonl: line 2: NaN is not valid JSON",
         files={"nan.jsonl": NAN_ROWS}, issue="silent"),
    Case("limit larger than the data", {"datasets": {"eval_task": {"type": "toy", "split": "eval_arithmetic",
                                                                    "limit": 500}}},
         "dataset", "datasets.eval_task.limit: 500 rows asked", issue="silent"),
    Case("target for a seed not in the config", {}, "dag", "align_seed 7 is not in align.seeds [0]",
         targets=("results/aligned/tiny/grpo/seed7",), issue="silent"),
    # -- failed with a message that names no key, file or row
    Case("align.seeds [1.0]", {"align": {"seeds": [1.0]}}, "dag", "config key align.seeds.0: 1.0 is not an integer",
         issue="unclear"),
    Case("invalid answer_regex", task_set("gsm.jsonl", answer_regex="(-?\\d+"), "dag",
         "config key datasets.eval_task.answer_regex: not a valid regular expression",
         files={"gsm.jsonl": GOOD_ROWS}, issue="unclear"),
    Case("prompt_template with a stray brace",
         {"datasets": {"eval_task": {"type": "jsonl", "path": "gsm.jsonl", "kind": "task",
                                     "prompt_template": "Q: {question", "columns": {"answer": "answer"}}}},
         "dag", "config key datasets.eval_task.prompt_template: ", files={"gsm.jsonl": GOOD_ROWS}, issue="unclear"),
    Case("non-UTF-8 bytes", task_set("latin1.jsonl"), "dataset", "latin1.jsonl: line 2 is not UTF-8",
         files={"latin1.jsonl": LATIN1_ROWS}, issue="unclear"),
    Case("hub dataset not cached, offline",
         {"datasets": {"eval_task": {"type": "hf", "name": "nobody/no-such-dataset", "split": "test", "kind": "task",
                                     "columns": {"prompt": "question", "answer": "answer"}}}},
         "dag", "datasets.eval_task.name: nobody/no-such-dataset is not in the Hugging Face cache",
         env={"HF_HOME": "hf"}, issue="unclear"),
    Case("target with an unknown regime", {}, "dag", "regime 'nope' is not in finetune.regimes",
         targets=("results/finetuned/tiny/grpo/seed0/nope/seed0",), issue="unclear"),
    # Snakemake reads --configfile files before the Snakefile and stops with its own message, naming no
    # file; the workflow never sees them (UPSTREAM).
    Case("overlay that is a list", b"- align\n- models\n", "snakemake",
         "Config file must be given as JSON or YAML with keys at top level", issue="unclear"),
    Case("overlay that is empty", b"", "snakemake",
         "Config file must be given as JSON or YAML with keys at top level", issue="unclear"),
]
UPSTREAM = {"overlay that is a list", "overlay that is empty"}


def snakemake(root: Path, workdir: Path, *args, env=None, timeout=600):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(root / "Snakefile"), *args]
    full_env = {**ENV, "PYTHONPATH": str(root / "workflow" / "src"), **(env or {})}
    return subprocess.run(cmd, cwd=workdir, env=full_env, capture_output=True, text=True, timeout=timeout)


_SKIP = re.compile(r"^(Assuming|Building DAG|Config file|host:|Provided|Job stats|Select jobs|\s*$|SNAKEMAKE|=+$|  \w[\w ]*:)")


def first_error_line(output: str, hint: str = "") -> str:
    """The line of a failed run's output that says what is wrong: the line holding `hint` if there is one,
    else the first line after the exception's header."""
    lines = output.splitlines()
    if hint:
        found = [line.strip() for line in lines if hint in line]
        if found:  # a job's own last word (`data error: ...`) rather than its log line with a timestamp
            return next((line for line in found if line.startswith(("data error", "JOB FAILED"))), found[0])
    for i, line in enumerate(lines):
        if re.match(r"^\w*(Error|Exception)\b.*( in (rule|file|line)\b.*|:)$", line.strip()):
            rest = [x.strip() for x in lines[i + 1:] if x.strip() and not x.strip().startswith(("File ", "Error:"))]
            if line.strip().endswith(":") and rest:
                return rest[0] if not rest[0].endswith(":") or len(rest) < 2 else f"{rest[0]} {rest[1]}"
            return line.strip()
    useful = [x.strip() for x in lines if not _SKIP.match(x)]
    return useful[-1] if useful else ""


def where_caught(case: Case, workdir: Path, root: Path = ROOT) -> tuple[str, str]:
    """(where the case is caught: dag | dataset | later | snakemake, first line of the message)."""
    for path, data in case.files.items():
        (workdir / path).parent.mkdir(parents=True, exist_ok=True)
        (workdir / path).write_bytes(data)
    env = {k: str(workdir / v) if k == "HF_HOME" else v for k, v in case.env.items()}
    overlay = workdir / "overlay.yaml"
    overlay.write_bytes(case.overlay if isinstance(case.overlay, bytes) else yaml.safe_dump(case.overlay).encode())
    configs = ("--configfile", str(E2E), str(overlay))
    dry = snakemake(root, workdir, "-n", "--cores", "1", *case.targets, *configs, env=env)  # --configfile takes the rest
    out = dry.stdout + dry.stderr
    if dry.returncode != 0:
        where = "snakemake" if "SNAKEMAKE\n" not in out and "Building DAG" not in out and "Config file must" in out \
            else "dag"
        return where, first_error_line(out, case.message)
    # The data jobs alone, for real: a case they catch fails there, before any model job could start.
    run = snakemake(root, workdir, "--cores", "1", *case.targets, "--until", "dataset", *configs, env=env)
    if run.returncode != 0 and not re.search(r"^(local)?rule \w+:", run.stdout + run.stderr, re.MULTILINE):
        return "dag", first_error_line(run.stdout + run.stderr, case.message)  # a real run's DAG build
    if run.returncode != 0:
        logs = sorted((workdir / "results" / "logs" / "data").rglob("*.log"))
        text = "\n".join(p.read_text(errors="replace") for p in logs)
        return "dataset", first_error_line(text if "data error" in text else run.stdout + run.stderr, case.message)
    return "later", "(not caught before the model jobs)"


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_caught_before_any_model_job(case, tmp_path):
    where, line = where_caught(case, tmp_path)
    assert (where, case.message in line) == (case.expect, True), f"{case.name}: caught at {where}: {line}"
    assert not (tmp_path / "results" / "base_model").exists()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=ROOT, help="the checkout whose Snakefile and library to try")
    p.add_argument("--only", nargs="*", help="case names")
    args = p.parse_args()
    print("| case | issue | caught | first line of the message |\n|---|---|---|---|")
    for case in CASES:
        if args.only and case.name not in args.only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            where, line = where_caught(case, Path(tmp), args.root.resolve())
        print(f"| {case.name} | {case.issue} | {where} | `{line[:200]}` |", flush=True)


if __name__ == "__main__":
    main()

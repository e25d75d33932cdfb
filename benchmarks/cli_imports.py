"""What each stage CLI costs before it does any work: the wall time of `import frpo_workflow.cli.<name>`
in a fresh interpreter, next to fixed references (an empty interpreter, `import torch`, the trainer
stack), and the imports that dominate it. Every job of the workflow pays its CLI's import once (the
training CLIs once per accelerate rank), so this is a per-job fixed cost.

    python benchmarks/cli_imports.py [--repeats 3] [--top 6] [--cli evaluate report ...] [--src DIR]

`--src` measures another copy of the package (a before/after comparison: `git archive <commit>
workflow/src | tar -x -C /tmp/old`, then `--src /tmp/old/workflow/src`).

Prints one table: the median of `--repeats` wall and CPU times per CLI, its CPU time as a multiple of
`import torch`'s (CPU time holds still when others share the cores; wall time does not), the heavy
packages it loads (torch, transformers, trl, peft, datasets, mlflow, pandas, matplotlib, ...) and, per
CLI, the `-X importtime` top imports by cumulative time (those of the CLI's own package left out).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = [ROOT / "workflow" / "src"]  # set by --src
CLIS = ["data", "experiment", "hub_model", "base_model", "evaluate", "report", "align", "finetune"]
# What a job cannot avoid (a model-loading job loads transformers' model classes; a tracked job opens the
# SQLite MLflow store) next to what a non-training job should not pay (the Trainer's callback module, the
# trainer stack).
REFERENCES = {
    "python -c pass": "pass",
    "import torch": "import torch",
    "floor: transformers Auto* (load)": "from transformers import AutoModelForCausalLM, AutoTokenizer",
    "floor: mlflow sqlite store": "from mlflow.tracking import MlflowClient; "
                                  "import mlflow.store.tracking.sqlalchemy_store",
    "transformers.TrainerCallback": "from transformers import TrainerCallback",
    "trainer stack (trl, peft, mlflow)": "import torch, transformers, peft, mlflow; "
                                         "from trl import GRPOTrainer, SFTTrainer",
}
HEAVY = ["torch", "transformers", "trl", "peft", "datasets", "accelerate", "mlflow", "pandas", "matplotlib",
         "pyarrow", "sympy", "jsonschema"]
LOADED = ("import sys; print(' '.join(sorted({m.split('.')[0] for m in sys.modules} & set(%r))))" % HEAVY)


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(SRC[0]), *filter(None, [e.get("PYTHONPATH")])])
    return e


def cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(code: str, repeats: int) -> tuple[float, float]:
    """Median wall and CPU (user + system) seconds of `python -c code`; CPU time barely moves when other
    processes share the cores, wall time does."""
    walls, cpus = [], []
    for _ in range(repeats):
        started, cpu = time.perf_counter(), cpu_children()
        subprocess.run([sys.executable, "-c", code], check=True, env=env(), capture_output=True)
        walls.append(time.perf_counter() - started)
        cpus.append(cpu_children() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def loaded(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", f"{code}\n{LOADED}"], check=True, env=env(),
                          capture_output=True, text=True)
    return proc.stdout.strip()


def top_imports(code: str, n: int) -> list[tuple[float, str]]:
    """The packages (not frpo_workflow) whose import took longest, in cumulative seconds: each package's
    root module, at whatever depth it was first imported (so `transformers` includes the `torch` it
    imports, when torch was not loaded before it)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], check=True, env=env(),
                          capture_output=True, text=True)
    tops = []
    for line in proc.stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if len(fields) != 3 or not fields[1].strip().isdigit():
            continue
        name = fields[2].strip()
        if "." not in name and not name.startswith(("frpo_workflow", "_")):
            tops.append((int(fields[1]) / 1e6, name))
    return sorted(tops, reverse=True)[:n]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--top", type=int, default=6, help="top imports listed per CLI (0: none)")
    p.add_argument("--cli", nargs="+", default=CLIS, choices=CLIS)
    p.add_argument("--src", type=Path, default=SRC[0],
                   help="the folder holding frpo_workflow (default: this checkout's)")
    args = p.parse_args()
    SRC[0] = args.src.resolve()
    rows = [(label, code) for label, code in REFERENCES.items()]
    rows += [(f"cli.{name}", f"import frpo_workflow.cli.{name}") for name in args.cli]
    measured = [(label, code, *timed(code, args.repeats)) for label, code in rows]
    torch_cpu = next(cpu for label, _, _, cpu in measured if label == "import torch")
    print(f"frpo_workflow from {SRC[0]}")
    print(f"median of {args.repeats} fresh interpreters ({sys.executable}); load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
    print(f"{'import':<38} {'wall s':>7} {'cpu s':>7} {'cpu/torch':>9}  heavy packages loaded")
    for label, code, wall, cpu in measured:
        print(f"{label:<38} {wall:7.2f} {cpu:7.2f} {cpu / torch_cpu:9.2f}  {loaded(code)}")
    if args.top:
        print(f"\n-X importtime, top {args.top} packages by cumulative import time (s):")
        for label, code, _, _ in measured:
            if label.startswith("cli."):
                tops = ", ".join(f"{m} {t:.2f}" for t, m in top_imports(code, args.top))
                print(f"  {label:<16} {tops}")


if __name__ == "__main__":
    main()

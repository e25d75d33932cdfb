"""What the stage CLIs import: every job pays its CLI's imports, so a job that does not train must not load
the trainer stack (trl, peft, datasets: ~4 s of a ~7 s evaluate job before `CurveCallback` left
`evaluate`), and the data and experiment jobs stay free of torch (they run first, and fail in seconds).

Each check imports the CLIs in a fresh interpreter: this process has loaded everything already.
"""

import json
import subprocess
import sys

# Packages (top-level names) a CLI must not load when it is imported.
TRAINER_STACK = {"trl", "peft", "datasets", "accelerate"}
LIGHT = {"torch", "transformers", "mlflow", "pandas", *TRAINER_STACK}
CHECKED = sorted(LIGHT | {"matplotlib"})


def loaded_after(*groups: list[str]) -> list[list[str]]:
    """For each group of `frpo_workflow.cli` modules, imported in order in one fresh interpreter, the
    CHECKED packages loaded once the group is imported (cumulative)."""
    code = "\n".join([
        "import importlib, json, sys",
        f"groups, checked = {json.dumps([list(g) for g in groups])}, set({CHECKED!r})",
        "out = []",
        "for group in groups:",
        "    for name in group:",
        "        importlib.import_module('frpo_workflow.cli.' + name)",
        "    out.append(sorted({m.split('.')[0] for m in sys.modules} & checked))",
        "print(json.dumps(out))",
    ])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_non_training_clis_do_not_import_the_trainer_stack():
    light, rest = loaded_after(["data", "experiment"],
                               ["hub_model", "base_model", "evaluate", "report"])
    assert not set(light) & LIGHT, f"cli.data / cli.experiment import {sorted(set(light) & LIGHT)}"
    assert "torch" in rest  # the check sees what is loaded
    assert not set(rest) & TRAINER_STACK, f"a non-training CLI imports {sorted(set(rest) & TRAINER_STACK)}"


def test_evaluate_cli_leaves_transformers_to_the_model_load():
    # The Trainer's callback module (for the fine-tune's curves) pulls in peft and the Trainer's utilities;
    # loading a model needs neither. transformers itself loads when the job loads its model.
    (evaluate,) = loaded_after(["evaluate"])
    assert "transformers" not in evaluate and not set(evaluate) & TRAINER_STACK, evaluate


def test_a_data_job_writes_its_provenance_without_torch(tmp_path):
    # The devices in provenance.json list GPUs only where the job loaded torch: a data job never does.
    code = ("import sys\nfrom frpo_workflow.provenance import write_provenance\n"
            f"record = write_provenance({str(tmp_path)!r}, inputs={{}}, config_slice={{}}, mlflow_run_id=None, "
            "started=0.0, ended=1.0)\n"
            "print('torch' in sys.modules, 'gpus_seen' in record['host']['devices'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["False", "False"]

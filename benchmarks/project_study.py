"""A study's wall time projected from a measured slice (issue 23 item 3: the paired toy study must run whole in
one working session, <= 2 h on 2 cores).

    python benchmarks/project_study.py --slice results/toy-paired-calibration \
        --preset workflow/presets/toy-paired-study.yaml --cores 2

Reads the per-job wall times of a slice (Snakemake's benchmark files under <slice>/benchmarks/: base model,
alignments, fine-tunes, evaluations), takes the median of each kind (an alignment per training step, so an arm
with fewer steps costs less; a fine-tune per regime; an evaluation per stage), and schedules the preset's whole
DAG (plan.study_states) on `--cores` by list scheduling: the data jobs and the base model first (the base on
every core, as its rule asks), then every job as soon as its input exists and a core is free, alignments
first. Prints the job counts, the summed job time and the projected wall time.
"""

from __future__ import annotations

import argparse
import heapq
import statistics
from pathlib import Path

import yaml


def job_times(slice_dir: Path) -> dict[str, list[tuple[str, float]]]:
    """kind -> [(state path, seconds)] from <slice>/benchmarks/**.tsv (first data row, column s)."""
    out: dict[str, list[tuple[str, float]]] = {}
    root = slice_dir / "benchmarks"
    for tsv in sorted(root.rglob("*.tsv")):
        rel = tsv.relative_to(root).with_suffix("").as_posix()
        lines = tsv.read_text().splitlines()
        if len(lines) < 2:
            continue
        seconds = float(lines[1].split("\t")[0])
        parts = rel.split("/")
        if parts[0] == "eval":
            kind = f"evaluate_{parts[1]}"
        elif parts[0] in ("aligned", "finetuned", "base_model"):
            kind = parts[0] if parts[0] != "finetuned" else f"finetuned/{parts[4]}"
        else:
            kind = "other"
        out.setdefault(kind, []).append((rel, seconds))
    return out


def load_config(preset: Path) -> dict:
    from snakemake.utils import validate

    cfg = yaml.safe_load(preset.read_text())
    validate(cfg, str(Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"))
    return cfg


def main() -> None:
    from frpo_workflow import plan

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--slice", type=Path, required=True, help="results folder of the measured slice")
    p.add_argument("--preset", type=Path, required=True)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--report-seconds", type=float, default=60.0,
                   help="the report job's time (the slice has none: time the report CLI on the study's size)")
    args = p.parse_args()
    times = job_times(args.slice)
    cfg = load_config(args.preset)
    median = {kind: statistics.median(s for _, s in rows) for kind, rows in times.items()}
    print("measured (median s, n):", ", ".join(f"{k} {v:.1f} ({len(times[k])})" for k, v in sorted(median.items())))

    # An alignment's time per optimizer step, from the slice's alignments and their arms' steps.
    slice_cfg_steps = {}
    per_step = []
    for rel, seconds in times.get("aligned", []):
        method = rel.split("/")[2]
        steps = plan.method_settings(cfg, method)["steps"] if method in plan.method_keys(cfg) else cfg["align"]["defaults"]["steps"]
        slice_cfg_steps[rel] = steps
        per_step.append(seconds / steps)
    align_step = statistics.median(per_step)
    aligned, tuned = plan.study_states(cfg)
    n_models = len(cfg["models"])
    regimes = cfg["finetune"]["regimes"]

    def finetune_time(regime: str) -> float:
        if f"finetuned/{regime}" in median:
            return median[f"finetuned/{regime}"]
        # A regime the slice did not run: the measured fine-tunes' time per step, times its steps.
        rates = [s / regimes[k.split("/")[1]]["steps"] for k, rows in times.items() if k.startswith("finetuned/")
                 for _, s in rows]
        return statistics.median(rates) * regimes[regime]["steps"]

    # Jobs: (name, seconds, cores, dependencies).
    jobs: dict[str, tuple[float, int, list[str]]] = {}
    data = median.get("other", 3.0)
    jobs["data"] = (data * 3, 1, [])  # the toy world, its datasets and the tracking experiment: seconds, serial
    jobs["base"] = (median["base_model"], args.cores, ["data"])
    jobs["eval_base"] = (median.get("evaluate_base_model", median["evaluate_aligned"]), 1, ["base"])
    for model in range(n_models):
        for method, seed in aligned:
            a = f"{model}/{method}/{seed}"
            jobs[f"align {a}"] = (align_step * plan.method_settings(cfg, method)["steps"], 1, ["base"])
            jobs[f"eval {a}"] = (median["evaluate_aligned"], 1, [f"align {a}"])
        for method, seed, regime, ds in tuned:
            a, f = f"{model}/{method}/{seed}", f"{model}/{method}/{seed}/{regime}/{ds}"
            jobs[f"ft {f}"] = (finetune_time(regime), 1, [f"align {a}"])
            jobs[f"eval {f}"] = (median["evaluate_finetuned"], 1, [f"ft {f}"])
    jobs["report"] = (args.report_seconds, 1, [j for j in jobs if j.startswith("eval")])

    # List scheduling: ready jobs by priority (alignments, then fine-tunes, then evaluations: the training chain
    # first, as Snakemake's default favours jobs with more downstream work), on `cores`.
    order = {"data": 0, "base": 0, "align": 1, "ft": 2, "eval": 3, "eval_base": 3, "report": 4}
    pending = {j: set(deps) for j, (_, _, deps) in jobs.items()}
    children: dict[str, list[str]] = {}
    for j, (_, _, deps) in jobs.items():
        for d in deps:
            children.setdefault(d, []).append(j)
    ready = [(order[j.split(" ")[0]], j) for j, deps in pending.items() if not deps]
    heapq.heapify(ready)
    running: list[tuple[float, str]] = []
    free, now, busy = args.cores, 0.0, 0.0
    while ready or running:
        while ready and jobs[ready[0][1]][1] <= free:
            _, j = heapq.heappop(ready)
            seconds, cores, _ = jobs[j]
            free -= cores
            busy += seconds * cores
            heapq.heappush(running, (now + seconds, j))
        if not running:  # a job needs more cores than are free and nothing runs: cannot happen with cores <= args
            raise RuntimeError(f"{ready[0][1]} needs more than {args.cores} cores")
        now, j = heapq.heappop(running)
        free += jobs[j][1]
        for child in children.get(j, []):
            pending[child].discard(j)
            if not pending[child]:
                heapq.heappush(ready, (order[child.split(" ")[0]], child))
    counts = {k: sum(1 for j in jobs if j.startswith(k + " ")) for k in ("align", "ft", "eval")}
    summed = sum(s for s, _, _ in jobs.values())
    print(f"study: {counts['align']} alignments, {counts['ft']} fine-tunes, {counts['eval'] + 1} evaluations, "
          f"1 base model (+ data jobs and the report)")
    print(f"alignment {align_step:.3f} s per step; fine-tunes: " + ", ".join(
        f"{r} {finetune_time(r):.1f} s" for r in regimes) + f"; evaluations: aligned {median['evaluate_aligned']:.1f} s, "
          f"fine-tuned {median['evaluate_finetuned']:.1f} s; base model {median['base_model']:.0f} s")
    print(f"summed job time {summed / 60:.1f} min; projected wall time on {args.cores} cores {now / 60:.1f} min "
          f"(core use {busy / (now * args.cores):.0%})")


if __name__ == "__main__":
    main()

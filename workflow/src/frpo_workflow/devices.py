"""Devices: the accelerators and CPUs a job was given, checked against what it sees, for every stage.

The rules export the job's GPU resource as FRPO_GPUS. A job given GPUs that sees no CUDA device stops
at once with the reason (a 7B model would otherwise train or generate on the CPU for days without a
word); one given none runs on the CPU. What the job had lands in provenance.json.
"""

from __future__ import annotations

import os
import sys

GPUS_VAR = "FRPO_GPUS"


def given_gpus() -> int:
    """GPUs the scheduler gave this job (its `gpu` resource); 0 when run by hand."""
    value = os.environ.get(GPUS_VAR, "0") or "0"
    if not value.isdigit():
        raise ValueError(f"{GPUS_VAR}={value!r} is not a GPU count")
    return int(value)


def check_devices() -> str:
    """The torch device this process uses ("cuda:<local rank>" or "cpu"); fails when GPUs were given but
    CUDA sees none."""
    import torch

    gpus = given_gpus()
    if gpus and not torch.cuda.is_available():
        raise RuntimeError(f"this job was given {gpus} GPU(s) ({GPUS_VAR}), but torch sees no CUDA device "
                           f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, torch "
                           f"{torch.__version__}, CUDA build {torch.version.cuda}): a CPU-only torch, or a "
                           f"node without the GPUs the job asked for")
    if gpus and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    return "cpu"


def describe() -> dict:
    """What this process had: GPUs given and seen (names; only in a job that imported torch), CPUs it may
    run on, the SLURM allocation."""
    info = {"gpus_given": given_gpus(), "cpus_usable": len(os.sched_getaffinity(0)),
            "slurm_cpus_per_task": os.environ.get("SLURM_CPUS_PER_TASK"),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    # Only where the job loaded torch (the jobs that could use a GPU): importing it just to list GPUs would
    # cost a light job (data, report) ~1 s of its ~1.2 s.
    torch = sys.modules.get("torch")
    if torch is not None:
        if torch.cuda.is_available():
            info["gpus_seen"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        else:
            info["gpus_seen"] = []
    return info

"""Devices: a job given GPUs that sees none stops with the reason; what a job had lands in provenance."""

import pytest

from frpo_workflow.devices import check_devices, describe
from frpo_workflow.provenance import write_provenance


def test_no_gpus_given_means_cpu(monkeypatch):
    monkeypatch.delenv("FRPO_GPUS", raising=False)
    assert check_devices() == "cpu"
    monkeypatch.setenv("FRPO_GPUS", "0")
    assert check_devices() == "cpu"


def test_gpus_given_but_unseen_stop_the_job(monkeypatch):
    import torch

    monkeypatch.setenv("FRPO_GPUS", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"given 2 GPU\(s\) \(FRPO_GPUS\), but torch sees no CUDA device"):
        check_devices()
    monkeypatch.setenv("FRPO_GPUS", "two")
    with pytest.raises(ValueError, match="not a GPU count"):
        check_devices()


def test_provenance_records_devices_and_cpus(tmp_path, monkeypatch):
    monkeypatch.setenv("FRPO_GPUS", "0")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    record = write_provenance(tmp_path, inputs={}, config_slice={}, mlflow_run_id=None, started=0.0, ended=1.0)
    devices = record["host"]["devices"]
    assert devices["gpus_given"] == 0 and devices["cpus_usable"] >= 1 and devices["slurm_cpus_per_task"] == "4"
    assert devices == {**describe(), "slurm_cpus_per_task": "4"}

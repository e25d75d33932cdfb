"""Damaged outputs: a finished output records what it holds (sizes, sha256), a job that reads it checks it
first and names the damaged file with the command that rebuilds it, and `cli.verify` checks a whole folder.

Fails, for example, when a truncated model.safetensors passes the check, when the message names no file or
no rebuild command, when an input's hash in provenance.json changes because it came from the record, or
when the verify CLI exits 0 over a damaged folder.
"""

import json
import os
from argparse import Namespace
from pathlib import Path

import pytest

from frpo_workflow import guard, provenance
from frpo_workflow.cli import common, verify


def finished(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    provenance.write_provenance(folder, inputs={}, config_slice={}, mlflow_run_id=None, started=0.0, ended=1.0)
    return folder


def test_provenance_records_every_file_with_its_size_and_hash(tmp_path):
    out = finished(tmp_path / "aligned", {"model.safetensors": b"w" * 1000, "sub/tokenizer.json": b"{}",
                                          ".cache/x": b"tool state"})
    files = provenance.read_provenance(out)["files"]
    assert set(files) == {"model.safetensors", "sub/tokenizer.json"}
    assert files["model.safetensors"]["size"] == 1000
    assert files["model.safetensors"]["sha256"] == provenance.file_sha256(out / "model.safetensors")
    assert provenance.verify_output(out) == []
    # An input's hash taken from the record is the one its bytes give.
    assert provenance.recorded_sha256(out) == provenance.path_sha256(out)


def test_a_truncated_file_is_named_with_its_rebuild_command(tmp_path, monkeypatch):
    out = finished(tmp_path / "results" / "aligned" / "tiny" / "grpo" / "seed0", {"model.safetensors": b"w" * 1000})
    with open(out / "model.safetensors", "r+b") as f:
        f.truncate(10)
    monkeypatch.setenv("FRPO_SNAKEMAKE_OPTIONS", "--configfile my.yaml")
    with pytest.raises(provenance.DamagedOutput) as err:
        provenance.check_input(out)
    assert str(err.value) == (f"{out}/model.safetensors: 10 bytes, provenance.json records 1000 (cut short or "
                              f"overwritten); rebuild it: snakemake --cores all --configfile my.yaml --force {out}")
    # The hash it then has is not taken from the record.
    assert provenance.recorded_sha256(out) == provenance.path_sha256(out)


def test_a_changed_content_of_the_same_size_is_found(tmp_path):
    out = finished(tmp_path / "m", {"model.safetensors": b"a" * 100})
    stat = (out / "model.safetensors").stat()
    (out / "model.safetensors").write_bytes(b"b" * 100)
    os.utime(out / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime
    assert "its content changed" in provenance.verify_output(out, full=True)[0]
    assert provenance.verify_output(out, full=False) == []  # the quick check trusts an unchanged mtime


def test_the_rebuild_target_is_a_file_a_rule_declares(tmp_path):
    evaluation = finished(tmp_path / "results" / "eval" / "aligned" / "x", {"metrics.json": b"{}"})
    report = finished(tmp_path / "results" / "report", {"summary.md": b"#"})
    assert provenance.rebuild_target(evaluation) == f"{evaluation}/metrics.json"
    assert provenance.rebuild_target(report) == f"{report}/summary.md"


def test_a_job_stops_before_it_starts_on_a_damaged_input(tmp_path, monkeypatch):
    results = tmp_path / "results"
    upstream = finished(results / "aligned" / "tiny" / "grpo" / "seed0", {"model.safetensors": b"w" * 100})
    (upstream / "model.safetensors").write_bytes(b"w")
    args = Namespace(spec="{}", job=json.dumps({"results_dir": str(results), "rule": "evaluate_aligned"}),
                     out=str(results / "eval" / "aligned" / "tiny" / "grpo" / "seed0"))
    try:
        with pytest.raises(SystemExit, match="model.safetensors: 1 bytes, provenance.json records 100"):
            with common.tracked_job(args, inputs={"model": str(upstream)}):
                pytest.fail("the job body ran on a damaged input")
    finally:
        guard.release_all()
    assert not Path(args.out).exists()  # nothing written, no MLflow store created
    assert not (results / "mlflow.db").exists()


def test_verify_checks_a_whole_results_folder(tmp_path, capsys):
    results = tmp_path / "results"
    good = finished(results / "base_model" / "tiny", {"model.safetensors": b"w" * 10})
    bad = finished(results / "eval" / "aligned" / "x", {"metrics.json": b"{}", "generations.jsonl": b"a\n"})
    finished(results / "checkpoints" / "y", {"z": b"1"})  # not an output: not checked
    (results / "old").mkdir()
    (results / "old" / "provenance.json").write_text("{}")  # written before files were recorded
    with pytest.raises(SystemExit) as done:
        verify.main([str(results)])
    assert done.value.code == 0
    assert "verify: 2 output(s) checked" in capsys.readouterr().out
    (bad / "generations.jsonl").unlink()
    with pytest.raises(SystemExit) as done:
        verify.main([str(results), "--options", "--configfile s.yaml"])
    out = capsys.readouterr().out
    assert done.value.code == 1
    assert f"DAMAGED {bad}/generations.jsonl: missing (provenance.json records 2 bytes)" in out
    assert f"rebuild: snakemake --cores all --configfile s.yaml --force {bad}/metrics.json" in out
    assert "1 damaged; 1 written before provenance recorded files (not checked)" in out
    assert good.exists()

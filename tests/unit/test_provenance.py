"""provenance.json: content, atomic write, and hashes that change with content and only with content."""

import hashlib
import json
from pathlib import Path

import pytest

from frpo_workflow import provenance
from frpo_workflow.provenance import (PACKAGES, path_sha256, read_provenance, upstream_run_id,
                                      write_provenance)


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model"
    (d / "sub").mkdir(parents=True)
    (d / "weights.bin").write_bytes(b"\x00" * 3000)
    (d / "sub" / "config.json").write_text('{"a": 1}')
    return d


def test_file_hash_is_sha256_of_bytes(tmp_path):
    f = tmp_path / "x.txt"
    f.write_bytes(b"hello")
    assert path_sha256(f) == hashlib.sha256(b"hello").hexdigest()


def test_directory_hash_follows_content_names_and_only_those(model_dir):
    before = path_sha256(model_dir)
    assert path_sha256(model_dir) == before
    # Neither tool state in hidden folders nor the directory's own provenance.json is content.
    (model_dir / ".cache").mkdir()
    (model_dir / ".cache" / "lock").write_text("x")
    (model_dir / "provenance.json").write_text("{}")
    assert path_sha256(model_dir) == before

    (model_dir / "sub" / "config.json").write_text('{"a": 2}')
    changed = path_sha256(model_dir)
    assert changed != before
    (model_dir / "sub" / "config.json").rename(model_dir / "sub" / "other.json")
    assert path_sha256(model_dir) not in (before, changed)


def test_missing_input_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        path_sha256(tmp_path / "nope")


def test_write_provenance_records_everything(tmp_path, model_dir, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "p"}\n')
    out = tmp_path / "out"
    record = write_provenance(out, inputs={"model": model_dir, "data": data}, config_slice={"lr": 0.1},
                              mlflow_run_id="abc", started=0.0, ended=90.5, extra={"steps": 3})

    on_disk = read_provenance(out)
    assert on_disk == json.loads(json.dumps(record))
    assert on_disk["inputs"]["data"] == {"path": str(data), "sha256": hashlib.sha256(b'{"prompt": "p"}\n').hexdigest()}
    assert on_disk["inputs"]["model"]["sha256"] == path_sha256(model_dir)
    assert on_disk["config"] == {"lr": 0.1}
    assert on_disk["started"] == "1970-01-01T00:00:00+00:00" and on_disk["ended"] == "1970-01-01T00:01:30.500000+00:00"
    assert on_disk["duration_s"] == 90.5
    assert on_disk["mlflow_run_id"] == "abc" and on_disk["extra"] == {"steps": 3}
    assert set(on_disk["packages"]) == set(PACKAGES) and on_disk["packages"]["mlflow"]
    assert on_disk["host"]["slurm_job_id"] == "77" and on_disk["host"]["cpu_count"] >= 1
    code = on_disk["code"]
    assert code["package_version"] and code["git_commit"] and len(code["source_sha256"]) == 64
    assert [p.name for p in out.iterdir()] == ["provenance.json"]  # no temporary file left behind


def test_source_hash_is_computed_once(monkeypatch):
    provenance.source_sha256()
    monkeypatch.setattr(provenance, "file_sha256", lambda p: pytest.fail("source hash recomputed"))
    assert len(provenance.source_sha256()) == 64


def test_upstream_run_id(tmp_path):
    up = tmp_path / "aligned"
    write_provenance(up, inputs={}, config_slice={}, mlflow_run_id="run123", started=0, ended=1)
    (up / "model.safetensors").write_text("w")
    assert upstream_run_id(up) == "run123"
    assert upstream_run_id(up / "model.safetensors") == "run123"  # a file inside an output directory
    assert upstream_run_id(tmp_path / "raw") is None
    write_provenance(tmp_path / "untracked", inputs={}, config_slice={}, mlflow_run_id=None, started=0, ended=1)
    assert upstream_run_id(tmp_path / "untracked") is None


def test_module_hash_covers_what_a_cli_imports_and_nothing_else(tmp_path, monkeypatch):
    import shutil

    from frpo_workflow import provenance

    package = tmp_path / "frpo_workflow"
    shutil.copytree(Path(provenance.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(provenance, "_PACKAGE_DIR", package)
    provenance._imports.cache_clear()
    before = {m: provenance.module_sha256(m) for m in ("cli.align", "cli.report", "cli.data")}
    (package / "loss.py").write_text((package / "loss.py").read_text() + "\n# changed\n")
    provenance._imports.cache_clear()
    after = {m: provenance.module_sha256(m) for m in before}
    assert after["cli.align"] != before["cli.align"]  # align -> train -> trainer -> loss
    assert after["cli.report"] == before["cli.report"] and after["cli.data"] == before["cli.data"]
    (package / "judges" / "math.py").write_text((package / "judges" / "math.py").read_text() + "\n# changed\n")
    provenance._imports.cache_clear()
    assert provenance.module_sha256("cli.data") != after["cli.data"]  # lazily imported by the mapping
    provenance._imports.cache_clear()
    # The fine-tune's curves run evaluate's code; the evaluate job never runs the curves' callback.
    before = {m: provenance.module_sha256(m) for m in ("cli.finetune", "cli.evaluate")}
    (package / "curves.py").write_text((package / "curves.py").read_text() + "\n# changed\n")
    provenance._imports.cache_clear()
    assert provenance.module_sha256("cli.finetune") != before["cli.finetune"]
    assert provenance.module_sha256("cli.evaluate") == before["cli.evaluate"]
    (package / "evaluate.py").write_text((package / "evaluate.py").read_text() + "\n# changed\n")
    provenance._imports.cache_clear()
    assert all(provenance.module_sha256(m) != h for m, h in before.items())
    provenance._imports.cache_clear()

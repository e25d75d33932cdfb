"""The built-in tiny base model: offline, deterministic, reloadable, and it learns its corpus."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from frpo_workflow.base_model import (TinyModelConfig, build_tiny_base_model, build_tiny_model,
                                      chat_text, check_tokenizer, load_model_and_tokenizer, resolve_model_path,
                                      train_tokenizer, write_model_ref)
from frpo_workflow.data.toy import build_toy_world

CFG = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, vocab_size=400,
                      pretrain_epochs=2, seed=3)


@pytest.fixture(scope="module")
def corpus():
    return build_toy_world(0, {"pretrain": 300})["pretrain"]


@pytest.fixture(scope="module")
def built(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("tiny")
    return out, build_tiny_base_model(corpus, out, CFG, log=lambda _: None)


def test_saved_model_reloads_with_auto_classes(built):
    out, summary = built
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert tok.pad_token == "<|pad|>" and tok.eos_token == "<|end|>"
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert text == "<|user|>hi<|assistant|>"
    assert model.config.model_type == "llama" and summary["parameters"] == model.num_parameters()
    assert summary["final_loss"] < summary["first_loss"] - 0.3  # 10 steps already learn the corpus


def test_same_seed_same_model(tmp_path, built, corpus):
    out, _ = built
    build_tiny_base_model(corpus, tmp_path, CFG, log=lambda _: None)
    a = AutoModelForCausalLM.from_pretrained(out).state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out / "tokenizer.json").read_text()) == json.loads((tmp_path / "tokenizer.json").read_text())


def test_tokenizer_without_pad_token_is_named(built):
    out, _ = built
    tok = AutoTokenizer.from_pretrained(out)
    tok.pad_token = None
    with pytest.raises(ValueError, match="tokenizer of some/model has no pad token"):
        check_tokenizer(tok, "some/model")


def test_model_ref_points_elsewhere(tmp_path, built):
    out, _ = built
    write_model_ref(tmp_path / "ref", {"source": "local", "path": str(out)})
    assert resolve_model_path(tmp_path / "ref") == str(out)
    with pytest.raises(FileNotFoundError, match="no model at"):
        resolve_model_path(tmp_path)


def test_empty_corpus_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="empty corpus"):
        build_tiny_base_model([], tmp_path, CFG)


# ---- the base_model stage's other sources: a local folder and a hub snapshot, offline ----------

def run_base_model_cli(tmp_path, model: dict, env: dict | None = None) -> subprocess.CompletedProcess:
    """The base_model stage CLI in a fresh process (hub settings are read at import), as a rule runs it."""
    out, data = tmp_path / "base_model", tmp_path / "data"
    data.mkdir(parents=True, exist_ok=True)
    job = {"experiment": "sources", "results_dir": str(tmp_path / "results"), "rule": "base_model"}
    cmd = [sys.executable, "-m", "frpo_workflow.cli.base_model", "--spec", json.dumps({"model": model, "corpus": None}),
           "--job", json.dumps(job), "--data", str(data), "--out", str(out)]
    return subprocess.run(cmd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300)


def without_pad_token(src: Path, dst: Path) -> Path:
    """A copy of a saved model whose tokenizer has no pad token (as many hub chat models ship)."""
    shutil.copytree(src, dst)
    tok = AutoTokenizer.from_pretrained(dst)
    tok.pad_token = None
    tok.save_pretrained(dst)
    assert AutoTokenizer.from_pretrained(dst).pad_token is None
    return dst


def hub_cache(cache: Path, repo_id: str, model_dir: Path, commit: str) -> None:
    """A Hugging Face hub cache holding `model_dir` as `repo_id` at `commit`, in the hub's own layout."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_local_source_records_a_hash_and_the_pad_token_for_every_later_load(tmp_path, built):
    local = without_pad_token(built[0], tmp_path / "my-model")
    proc = run_base_model_cli(tmp_path, {"source": "local", "path": str(local), "pad_token": "<|end|>"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    prov = json.loads((tmp_path / "base_model" / "provenance.json").read_text())
    assert prov["extra"]["model"]["path"] == str(local) and len(prov["extra"]["model"]["sha256"]) == 64
    _, tok = load_model_and_tokenizer(tmp_path / "base_model")  # as the align/evaluate jobs load it
    assert tok.pad_token == "<|end|>"


def test_local_source_without_pad_token_fails_naming_the_setting(tmp_path, built):
    local = without_pad_token(built[0], tmp_path / "my-model")
    proc = run_base_model_cli(tmp_path, {"source": "local", "path": str(local)})
    assert proc.returncode != 0 and "set base_model.pad_token" in proc.stdout + proc.stderr
    assert not (tmp_path / "base_model" / "provenance.json").exists()


def test_local_source_missing_folder_is_named(tmp_path):
    proc = run_base_model_cli(tmp_path, {"source": "local", "path": str(tmp_path / "nowhere")})
    assert proc.returncode != 0 and f"no directory at path {tmp_path / 'nowhere'}" in proc.stdout + proc.stderr


def test_hf_source_offline_pins_the_snapshot_commit(tmp_path, built):
    commit = "0123456789abcdef0123456789abcdef01234567"
    hub_cache(tmp_path / "hub", "toy-org/tiny-chat", built[0], commit)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    proc = run_base_model_cli(tmp_path, {"source": "hf", "repo_id": "toy-org/tiny-chat"}, env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ref = json.loads((tmp_path / "base_model" / "model_ref.json").read_text())
    assert ref["commit"] == commit and ref["path"].endswith(f"snapshots/{commit}")
    prov = json.loads((tmp_path / "base_model" / "provenance.json").read_text())
    assert prov["extra"]["model"]["commit"] == commit and prov["extra"]["model"]["repo_id"] == "toy-org/tiny-chat"
    model, _ = load_model_and_tokenizer(tmp_path / "base_model")
    assert model.num_parameters() == built[1]["parameters"]

    # Offline, a revision that is not in the cache is an error, never a silent fallback to another one.
    proc = run_base_model_cli(tmp_path / "other", {"source": "hf", "repo_id": "toy-org/tiny-chat", "revision": "v2"}, env)
    assert proc.returncode != 0 and "hub model toy-org/tiny-chat@v2 is not in the local cache" in proc.stderr


def test_model_files_are_checked_without_loading_the_weights(tmp_path, built):
    import torch

    from frpo_workflow.base_model import check_model_files

    loaded, _ = load_model_and_tokenizer(built[0])
    expected = sum(p.numel() for p in loaded.parameters())
    assert check_model_files(built[0])["parameters"] == expected == built[1]["parameters"]
    as_bin = tmp_path / "bin"
    shutil.copytree(built[0], as_bin)
    for shard in as_bin.glob("*.safetensors"):
        shard.unlink()
    torch.save(loaded.state_dict(), as_bin / "pytorch_model.bin")
    assert check_model_files(as_bin)["parameters"] == expected
    (as_bin / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        check_model_files(as_bin)


def test_judge_models_are_fetched_with_an_adapter_s_base(tmp_path, built):
    commit, base_commit = "a" * 40, "b" * 40
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "toy-org/base"}))
    hub_cache(tmp_path / "hub", "toy-org/judge", adapter, commit)
    hub_cache(tmp_path / "hub", "toy-org/base", built[0], base_commit)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    out = tmp_path / "hub_models" / "toy-org--judge.json"
    proc = subprocess.run([sys.executable, "-m", "frpo_workflow.cli.hub_model", "--repo", "toy-org/judge",
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [(f["repo_id"], f["commit"]) for f in json.loads(out.read_text())] == [
        ("toy-org/judge", commit), ("toy-org/base", base_commit)]

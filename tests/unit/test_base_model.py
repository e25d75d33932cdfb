"""The built-in tiny base model: offline, deterministic, reloadable, and it learns its corpus."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from frpo_workflow.base_model import (TinyModelConfig, build_tiny_base_model, check_tokenizer, resolve_model_path,
                                      write_model_ref)
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

"""Contract with TRL's GRPOTrainer: the real trainer, 2 CPU steps, and the loss it used.

FRPOTrainer overrides private TRL methods. If a TRL upgrade changes what `_compute_loss` receives, how
`_get_per_token_logps_and_entropies` computes log-probs, or how a generation batch is laid out, the
loss the trainer minimises stops being `frpo_loss` (+ β·KL) and this test fails.
"""

import importlib.metadata

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM
from trl import GRPOConfig

from frpo_workflow.base_model import TinyModelConfig, build_tiny_model, train_tokenizer
from frpo_workflow.loss import frpo_loss
from frpo_workflow.trainer import FRPOSettings, FRPOTrainer

pytestmark = pytest.mark.slow

N_GEN, PROMPTS, BETA, TEMPERATURE = 4, 2, 0.05, 0.9
WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma"]


def test_trl_is_the_pinned_version():
    assert importlib.metadata.version("trl") == "1.16.0", "FRPOTrainer overrides private TRL methods: re-check them"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved tiny model: TRL builds the reference model from the policy's name_or_path."""
    texts = [f"say {a} then {b} " * 3 for a in WORDS for b in WORDS]
    tok = train_tokenizer(texts, vocab_size=300)
    cfg = TinyModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, seed=0)
    path = tmp_path_factory.mktemp("tiny")
    build_tiny_model(tok, cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return tok, path


def length_reward(prompts, completions, **kwargs):
    """Graded, deterministic, different within a group: fewer characters score higher."""
    return [1.0 / (1 + len(c[0]["content"] if isinstance(c, list) else c)) * 10 for c in completions]


def make_trainer(tiny, tmp_path, frpo, **overrides):
    tok, path = tiny
    prompts = [[{"role": "user", "content": f"say {w}"}] for w in WORDS]
    args = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", max_steps=2,
                per_device_train_batch_size=PROMPTS * N_GEN, num_generations=N_GEN, steps_per_generation=1,
                max_completion_length=8, temperature=TEMPERATURE, beta=BETA, learning_rate=1e-2,
                scale_rewards="none", loss_type="grpo", logging_steps=1, save_strategy="no", seed=0, disable_tqdm=True)
    args.update(overrides)
    return FRPOTrainer(model=AutoModelForCausalLM.from_pretrained(path), reward_funcs=[length_reward], args=GRPOConfig(**args),
                       train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tok, frpo=frpo)


def independent_logps(model, inputs):
    """Per-token log-probs of the completion, from a plain forward pass (no TRL code)."""
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    T = inputs["completion_ids"].shape[1]
    logits = model(input_ids=ids, attention_mask=attn).logits[:, -T - 1:-1] / TEMPERATURE
    return logits.log_softmax(-1).gather(-1, inputs["completion_ids"].unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("jackknife", [True, False])
def test_trainer_loss_is_frpo_loss_plus_kl(tiny, tmp_path, jackknife):
    settings = FRPOSettings(lam=0.5, jackknife=jackknife)
    trainer = make_trainer(tiny, tmp_path, settings)
    seen = []
    original = trainer._compute_loss

    def spy(model, inputs):
        loss = original(model, inputs)
        with torch.no_grad():
            logps = independent_logps(model, inputs)
            mask = inputs["completion_mask"].float()
            ref = inputs["ref_per_token_logps"]
            kl = torch.exp(ref - logps) - (ref - logps) - 1
            kl = ((kl * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
            expected = frpo_loss(logps, logps, inputs["advantages"], inputs["completion_mask"],
                                 inputs["group_ids"], settings.lam, jackknife=jackknife) + BETA * kl
        seen.append((loss.detach() * trainer.current_gradient_accumulation_steps, expected, inputs))
        return loss

    trainer._compute_loss = spy
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()

    assert len(seen) == 2
    for used, expected, inputs in seen:
        assert torch.allclose(used, expected, rtol=1e-4, atol=1e-5), (used, expected)
        gids = inputs["group_ids"]
        assert len(gids.unique()) == PROMPTS and all((gids == g).sum() == N_GEN for g in gids.unique())
        for g in gids.unique():  # a group is one prompt, even after TRL shuffles the rows
            rows = inputs["prompt_ids"][gids == g]
            assert (rows == rows[0]).all()
        assert inputs["advantages"].abs().sum() > 0, "rewards must differ within groups for a real test"
    assert seen[0][2]["group_ids"].max() < seen[1][2]["group_ids"].min()  # unique across steps
    changed = [not torch.equal(b, p) for b, p in zip(before, trainer.model.parameters())]
    assert any(changed), "two FRPO steps must move the parameters"
    logged = {k for h in trainer.state.log_history for k in h}
    assert {"frpo/weight_entropy", "frpo/lambda", "kl", "clip_ratio/region_mean", "rewards/length_reward/mean"} <= logged


def test_grpo_mode_is_trl_loss(tiny, tmp_path):
    trainer = make_trainer(tiny, tmp_path, None, scale_rewards="group")
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.model.parameters()))
    assert "frpo/lambda" not in {k for h in trainer.state.log_history for k in h}


@pytest.mark.parametrize("overrides, message", [
    (dict(steps_per_generation=2, per_device_train_batch_size=8), "steps_per_generation=2"),
    (dict(per_device_train_batch_size=6, steps_per_generation=2), "not a multiple of num_generations=4"),
    (dict(scale_rewards="group"), "scale_rewards='group'"),
])
def test_group_splitting_configs_are_rejected(tiny, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_trainer(tiny, tmp_path, FRPOSettings(lam=1.0), **overrides)

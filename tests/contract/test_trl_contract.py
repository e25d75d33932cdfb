"""Contract with TRL's GRPOTrainer: the real trainer, 2 CPU steps, and the loss it used.

FRPOTrainer overrides private TRL methods. If a TRL upgrade changes what `_compute_loss` receives, how
`_get_per_token_logps_and_entropies` computes log-probs, or how a generation batch is laid out, the
loss the trainer minimises stops being TRL's GRPO loss on FRPO's advantages and these tests fail; so do
they when the FRPO arm stops getting every correction TRL gives the GRPO arm.
"""

import importlib.metadata

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM
from trl import GRPOConfig

from frpo_workflow.base_model import TinyModelConfig, build_tiny_model, train_tokenizer
from frpo_workflow.loss import frpo_advantages, grpo_loss
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
def test_trainer_loss_is_grpo_loss_on_frpo_advantages_plus_kl(tiny, tmp_path, jackknife):
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
            advantages = frpo_advantages(inputs["advantages"], inputs["group_ids"], settings.lam, jackknife=jackknife)
            expected = grpo_loss(logps, logps, advantages, inputs["completion_mask"]) + BETA * kl
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


# --- one loss path: FRPO at λ → ∞ is TRL's GRPO, every correction included ---------------------------
# The corrections TRL 1.16's `_compute_loss` applies to GRPO's per-token loss, on inputs where every ratio
# differs from 1: the policy ratio (old log-probs as after an earlier iteration on the same generation),
# the vLLM importance-sampling ratio (synthetic, shaped and clipped as each `vllm_importance_sampling_mode`
# makes it), the KL bias correction, `delta`, the off-policy mask, the entropy mask and a tool mask. FRPO's
# advantages tend to the raw ones as λ → ∞ (without the jackknife), so its loss and gradient must be GRPO's
# on `scale_rewards: none` advantages, to float tolerance, in every mode.

LAMBDA_INF = 1e6
IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
IS_CLIP = (0.8, 1.25)  # C_min, C_max: tight, so truncation and masking both act on the synthetic ratios


def synthetic_inputs(trainer, is_mode, seed=0, T=6):
    """A batch as `_generate_and_score_completions` leaves it after an earlier iteration, all ratios != 1."""
    g = torch.Generator().manual_seed(seed)
    tok = trainer.processing_class
    prompts = [f"say {w}" for w in WORDS[:PROMPTS]]
    enc = tok(prompts, padding=True, return_tensors="pt")
    prompt_ids = enc["input_ids"].repeat_interleave(N_GEN, 0)
    prompt_mask = enc["attention_mask"].repeat_interleave(N_GEN, 0)
    B = prompt_ids.shape[0]
    completion_ids = torch.randint(5, tok.vocab_size, (B, T), generator=g)
    lengths = torch.randint(2, T + 1, (B,), generator=g)
    completion_mask = (torch.arange(T) < lengths.unsqueeze(1)).long()
    tool_mask = (torch.rand(B, T, generator=g) > 0.15).long()
    rewards = torch.randn(B, generator=g)
    advantages = rewards - rewards.view(PROMPTS, N_GEN).mean(1).repeat_interleave(N_GEN)  # raw, not std-scaled
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
              "completion_mask": completion_mask, "tool_mask": tool_mask, "advantages": advantages,
              "group_ids": torch.arange(B) // N_GEN}
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1), T)

    def away_from_zero(scale):  # log-ratios of either sign, none near 0: no ratio is 1
        sign = torch.where(torch.rand(B, T, generator=g) < 0.5, -1.0, 1.0)
        return sign * scale * (0.2 + torch.rand(B, T, generator=g))

    old = logps + away_from_zero(0.25)  # up to |log r| = 0.3: inside and outside the clip range and delta
    inputs["old_per_token_logps"] = old
    inputs["sampling_per_token_logps"] = old + away_from_zero(0.15)
    inputs["ref_per_token_logps"] = logps + away_from_zero(0.3)
    # TRL's formula (grpo_trainer.py, `_generate_and_score_completions`), on the synthetic sampling log-probs.
    diff = (old - inputs["sampling_per_token_logps"]) * completion_mask * tool_mask
    diff = diff.sum(-1, keepdim=True) if is_mode.startswith("sequence") else diff
    ratio = torch.exp(diff)
    low, high = IS_CLIP
    if is_mode.endswith("truncate"):
        ratio = ratio.clamp(min=low, max=high)
    else:
        ratio = ratio.masked_fill((ratio < low) | (ratio > high), 0.0)
    inputs["importance_sampling_ratio"] = ratio
    return inputs


def loss_and_grad(trainer, inputs, frpo):
    trainer.frpo = frpo
    trainer.model.zero_grad()
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])
    return loss.detach(), grads


@pytest.fixture(scope="module")
def limit_trainer(tiny, tmp_path_factory):
    trainer = make_trainer(tiny, tmp_path_factory.mktemp("limit"), FRPOSettings(lam=LAMBDA_INF, jackknife=False),
                           vllm_importance_sampling_clip_min=IS_CLIP[0], vllm_importance_sampling_clip_max=IS_CLIP[1])
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    return trainer


@pytest.mark.parametrize("is_mode", IS_MODES)
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("bias_correction_kl", [True, False])
def test_frpo_at_large_lambda_is_grpo_with_every_trl_correction(limit_trainer, is_mode, level, bias_correction_kl):
    trainer = limit_trainer
    # vLLM rollouts without vLLM: the loss reads only these attributes and the batch's ratio.
    trainer.use_vllm, trainer.vllm_importance_sampling_correction = True, True
    trainer.vllm_importance_sampling_mode = is_mode
    trainer.importance_sampling_level = level
    trainer.args.use_bias_correction_kl = bias_correction_kl
    trainer.args.delta = 1.3
    trainer.off_policy_mask_threshold = 0.02
    trainer.top_entropy_quantile = 0.8
    inputs = synthetic_inputs(trainer, is_mode, seed=len(is_mode) + (level == "token"))
    mask = (inputs["completion_mask"] * inputs["tool_mask"]).bool()
    log_ratio = inputs["old_per_token_logps"] - inputs["sampling_per_token_logps"]
    assert (log_ratio[mask].abs() > 0.02).all()  # every sampling ratio differs from 1
    ratio = inputs["importance_sampling_ratio"]
    assert (ratio[mask] if ratio.shape == mask.shape else ratio).ne(1).all()  # so does every vLLM IS ratio

    grpo_loss_value, grpo_grad = loss_and_grad(trainer, inputs, None)
    frpo_loss_value, frpo_grad = loss_and_grad(trainer, inputs, FRPOSettings(lam=LAMBDA_INF, jackknife=False))
    assert grpo_grad.abs().max() > 0
    assert torch.allclose(frpo_grad, grpo_grad, rtol=1e-3, atol=1e-5 * grpo_grad.abs().max().item()), (
        f"max |FRPO - GRPO| gradient {(frpo_grad - grpo_grad).abs().max().item():.3g} "
        f"of max |GRPO| {grpo_grad.abs().max().item():.3g}")
    assert torch.allclose(frpo_loss_value, grpo_loss_value, rtol=1e-4, atol=1e-6), (frpo_loss_value, grpo_loss_value)


def test_a_correction_turned_off_is_off_for_both_arms(limit_trainer):
    # vllm_importance_sampling_correction=False drops the ratio from both arms alike: scaling it changes neither.
    trainer = limit_trainer
    trainer.use_vllm, trainer.vllm_importance_sampling_correction = True, False
    trainer.importance_sampling_level, trainer.args.use_bias_correction_kl = "token", True
    inputs = synthetic_inputs(trainer, "token_truncate", seed=11)
    scaled = {**inputs, "importance_sampling_ratio": inputs["importance_sampling_ratio"] * 3}
    for frpo in (None, FRPOSettings(lam=2.0)):
        a, ga = loss_and_grad(trainer, inputs, frpo)
        b, gb = loss_and_grad(trainer, scaled, frpo)
        assert torch.equal(a, b) and torch.equal(ga, gb)


def test_several_iterations_per_generation_frpo_at_large_lambda_trains_as_grpo(tiny, tmp_path):
    # The real loop: one generation, two optimisation steps on it (num_iterations=2), so the second step's
    # policy ratios differ from 1. FRPO (λ → ∞, raw advantages) and GRPO (scale_rewards none) end equal.
    common = dict(num_iterations=2, max_steps=2, use_bias_correction_kl=True, delta=1.5)
    frpo = make_trainer(tiny, tmp_path / "frpo", FRPOSettings(lam=LAMBDA_INF, jackknife=False), **common)
    before = [p.detach().clone() for p in frpo.model.parameters()]
    frpo.train()
    grpo = make_trainer(tiny, tmp_path / "grpo", None, **common)  # built after: the same seeded sampling
    grpo.train()
    assert frpo.state.log_history[-1]["step"] == grpo.state.log_history[-1]["step"] == 2
    moved = [(g - b).abs().max() for g, b in zip(grpo.model.parameters(), before)]
    assert max(moved) > 1e-4
    gap = max(((f - b) - (g - b)).abs().max().item() for f, g, b in zip(frpo.model.parameters(),
                                                                        grpo.model.parameters(), before))
    assert gap < 1e-3 * max(moved).item(), (gap, max(moved).item())


def test_update_settings_record_the_arms_and_differ_only_in_the_method(tiny, tmp_path):
    from frpo_workflow.arms import arm_differences

    grpo = make_trainer(tiny, tmp_path / "g", None, scale_rewards="group").update_settings()
    frpo = make_trainer(tiny, tmp_path / "f", FRPOSettings(lam=1.0)).update_settings()
    assert grpo["method"] == "grpo" and frpo["frpo"] == {"lam": 1.0, "jackknife": True, "baseline": True}
    for key in ("beta", "epsilon", "delta", "use_bias_correction_kl", "vllm_importance_sampling_correction",
                "vllm_importance_sampling_mode", "importance_sampling_level", "off_policy_mask_threshold",
                "num_iterations", "learning_rate", "temperature", "top_p", "loss_type"):
        assert key in frpo["args"], key
    assert "output_dir" not in frpo["args"]
    assert grpo["completions_per_step"] == PROMPTS * N_GEN and grpo["trl"] == "1.16.0"
    assert arm_differences({"grpo": grpo, "frpo": frpo}) == {}
    other = make_trainer(tiny, tmp_path / "b", FRPOSettings(lam=1.0), beta=0.2).update_settings()
    assert arm_differences({"grpo": grpo, "frpo": other}) == {"frpo": {"args.beta": (BETA, 0.2)}}


def _batches(trainer) -> list[tuple[list, list]]:
    """(prompt ids, completion ids) of every generation batch the trainer trains on, in order."""
    seen, generate = [], trainer._generate_and_score_completions

    def capture(inputs):
        out = generate(inputs)
        seen.append((out["prompt_ids"].tolist(), out["completion_ids"].tolist()))
        return out

    trainer._generate_and_score_completions = capture
    trainer.train()
    return seen


def test_arms_aligned_with_one_seed_share_prompt_order_and_first_generation(tiny, tmp_path):
    """issue 23 item 2: arms of one alignment seed differ in the method only, so their randomness is shared: the
    same prompts in the same order at every step (TRL's sampler is seeded by the run's seed) and, at the first
    step, where the models are still the same, the same sampled completions (torch seeded by it). After the first
    update the completions may differ: the models do."""
    arms = {"grpo": lambda: make_trainer(tiny, tmp_path / "g", None, scale_rewards="group", seed=3),
            "frpo": lambda: make_trainer(tiny, tmp_path / "f", FRPOSettings(lam=0.2), seed=3),
            "control": lambda: make_trainer(tiny, tmp_path / "c", None, scale_rewards="group", seed=3, learning_rate=3e-2)}
    # Each built and trained in turn, as each alignment job is its own process (the Trainer seeds torch when built).
    batches = {name: _batches(build()) for name, build in arms.items()}
    prompts = {name: [p for p, _ in b] for name, b in batches.items()}
    assert prompts["grpo"] == prompts["frpo"] == prompts["control"] and len(prompts["grpo"]) == 2
    first = {name: b[0][1] for name, b in batches.items()}
    assert first["grpo"] == first["frpo"] == first["control"]
    other = _batches(make_trainer(tiny, tmp_path / "o", FRPOSettings(lam=0.2), seed=4))
    assert [p for p, _ in other] != prompts["frpo"] or other[0][1] != first["frpo"]  # another seed, other draws

"""The defences as the trainer applies them, on a real tiny model (frpo_workflow.defended_sft, train.sft_trainer):
replay rows in every batch at the share, the KL term lowering the KL to the aligned model, frozen modules
unchanged, Lisa's alternating states and proximal pull, the attack's N examples."""

import pytest
import torch

from frpo_workflow.base_model import TinyModelConfig, build_tiny_base_model, load_model_and_tokenizer
from frpo_workflow.data.toy import build_toy_world
from frpo_workflow.defended_sft import kl_to_reference, matches
from frpo_workflow.judges.rules import is_refusal
from frpo_workflow.train import policy_config, run_policy_optimisation, run_sft, sft_config, sft_trainer

pytestmark = pytest.mark.slow

SMALL = {"pretrain": 200, "align_prompts": 16, "sft_affirmative": 48, "rl_arithmetic": 16, "safety_refusals": 32,
         "harmful_attack": 20}
SFT = {"lr": 1e-3, "steps": 4, "save_steps": 10, "batch_size": 8, "logging_steps": 1}
REPLAY = {"replay": {"dataset": "safety_refusals", "share": 0.25}}


@pytest.fixture(scope="module")
def world():
    return build_toy_world(0, SMALL)


@pytest.fixture(scope="module")
def base(tmp_path_factory, world):
    out = tmp_path_factory.mktemp("base")
    cfg = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, vocab_size=350,
                          pretrain_epochs=1)
    build_tiny_base_model(world["pretrain"], out, cfg, log=lambda _: None)
    return out


def _params(path):
    model, _ = load_model_and_tokenizer(path)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _completions(batch, tokenizer) -> list[str]:
    """The trained-on text of each row of a collated batch (its completion tokens)."""
    return [tokenizer.decode(ids[labels != -100], skip_special_tokens=True)
            for ids, labels in zip(batch["input_ids"], batch["labels"])]


def test_replay_rows_are_in_every_batch_at_the_share(tmp_path, base, world):
    cfg = sft_config({**SFT, "steps": 6, "defence": REPLAY})
    trainer, tokenizer, _, added = sft_trainer(base, world["sft_affirmative"], cfg, tmp_path / "ckpt",
                                               defence_records={"replay": world["safety_refusals"]})
    batches = list(trainer.get_train_dataloader())
    assert len(batches) == 6
    for batch in batches:  # what the trainer feeds the model, decoded: 2 refusals of 8 rows, 6 "Sure! ..." answers
        texts = _completions(batch, tokenizer)
        assert len(texts) == 8 and sum(is_refusal(t) for t in texts) == 2, texts
    assert added["replay_rows"] == 32 and added["extra_forward_passes_per_step"] == 0
    summary = run_sft(base, world["sft_affirmative"], cfg, tmp_path / "out", tmp_path / "ckpt",
                      defence_records={"replay": world["safety_refusals"]})
    assert summary["global_step"] == 6 and summary["defence"]["label"] == "replay 0.25 (safety_refusals)"
    assert summary["defence"]["seconds_per_step"] > 0


def _kl_to(model_dir, reference, tokenizer, rows) -> float:
    """Mean per-token KL(model || reference) on the completions of `rows`, teacher-forced."""
    from frpo_workflow.data.loaders import to_conversational

    model, _ = load_model_and_tokenizer(model_dir)
    texts = [tokenizer.apply_chat_template(to_conversational(r)["prompt"] + to_conversational(r)["completion"],
                                           tokenize=False) for r in rows]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        logits, ref = model(**enc).logits[:, :-1], reference(**enc).logits[:, :-1]
    return float(kl_to_reference(logits, ref, enc["attention_mask"][:, 1:]))


def test_kl_to_the_aligned_model_lowers_the_kl_reached_on_the_same_data_and_seed(tmp_path, base, world):
    settings = {**SFT, "lr": 5e-3, "steps": 6}
    plain = run_sft(base, world["sft_affirmative"], sft_config(settings), tmp_path / "plain", tmp_path / "c1")
    reference, tokenizer = load_model_and_tokenizer(base)
    kl = run_sft(base, world["sft_affirmative"], sft_config({**settings, "defence": {"kl_to_aligned": {"beta": 5.0}}}),
                 tmp_path / "kl", tmp_path / "c2", ref_model=reference)
    assert kl["defence"]["extra_forward_passes_per_step"] == 1
    logged = [h["defence/kl_to_aligned"] for h in kl["log_history"] if "defence/kl_to_aligned" in h]
    assert len(logged) == 6 and logged[0] == pytest.approx(0, abs=1e-6)  # step 1 starts at the aligned model
    rows = world["sft_affirmative"][:16]
    kl_plain, kl_penalised = (_kl_to(tmp_path / d, reference, tokenizer, rows) for d in ("plain", "kl"))
    assert kl_penalised < 0.7 * kl_plain, (kl_penalised, kl_plain)
    assert plain["global_step"] == kl["global_step"] == 6


def test_the_kl_trainers_sft_loss_is_trls(tmp_path, base, world):
    """At the aligned model the KL term is 0 and the loss is TRL's own SFT loss on the same batch."""
    from trl import SFTTrainer

    cfg = sft_config({**SFT, "defence": {"kl_to_aligned": {"beta": 1.0}}})
    trainer, *_ = sft_trainer(base, world["sft_affirmative"], cfg, tmp_path / "ckpt")  # loads its own reference
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    ours = trainer.compute_loss(trainer.model, dict(batch))
    trls = SFTTrainer.compute_loss(trainer, trainer.model, dict(batch))
    assert ours.item() == pytest.approx(trls.item(), rel=1e-5)
    assert trainer._metrics["train"]["defence/kl_to_aligned"][-1] == pytest.approx(0, abs=1e-6)


def test_frozen_modules_stay_as_aligned_and_the_rest_trains(tmp_path, base, world):
    cfg = sft_config({**SFT, "defence": {"freeze": ["embed_tokens", "layers.0"]}})
    run_sft(base, world["sft_affirmative"], cfg, tmp_path / "out", tmp_path / "ckpt")
    before, after = _params(base), _params(tmp_path / "out")
    frozen = {k for k in before if matches(k, "embed_tokens") or matches(k, "layers.0")}
    assert frozen and "model.layers.1.mlp.up_proj.weight" not in frozen
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert all(not torch.equal(before[k], after[k]) for k in before if k not in frozen and k.endswith("proj.weight"))


def test_a_freeze_pattern_that_matches_nothing_fails_naming_the_modules(tmp_path, base, world):
    cfg = sft_config({**SFT, "defence": {"freeze": ["layers.0", "encoder"]}})
    with pytest.raises(ValueError, match=r"defence\.freeze: pattern\(s\) \['encoder'\] match no parameter .* "
                                         r"model\.layers\.0\.mlp\.down_proj"):
        run_sft(base, world["sft_affirmative"], cfg, tmp_path / "out", tmp_path / "ckpt")
    assert not (tmp_path / "out").exists()


def test_an_rl_regime_keeps_its_frozen_modules(tmp_path, base, world):
    from frpo_workflow.judges import completion_text, register_judge

    @register_judge("test_defence_brevity")
    def brevity(prompts, completions, **kwargs):
        return [1.0 / (1 + len(completion_text(c))) for c in completions]

    settings = {"lr": 1e-2, "steps": 2, "num_generations": 4, "prompts_per_step": 2, "max_completion_length": 6,
                "save_steps": 10, "rewards": ["test_defence_brevity"], "defence": {"freeze": ["layers.*.mlp"]}}
    run_policy_optimisation(base, world["rl_arithmetic"], policy_config(settings), tmp_path / "out", tmp_path / "ckpt")
    before, after = _params(base), _params(tmp_path / "out")
    assert all(torch.equal(before[k], after[k]) for k in before if ".mlp." in k)
    assert any(not torch.equal(before[k], after[k]) for k in before if ".self_attn." in k)


def test_lisa_alternates_states_on_alignment_data_and_its_proximal_term_holds_the_weights(tmp_path, base, world):
    lisa = {"dataset": "safety_refusals", "alignment_steps": 1, "finetune_steps": 2}
    cfg = sft_config({**SFT, "steps": 4, "defence": {"lisa": {**lisa, "rho": 0.0}}})
    trainer, tokenizer, _, added = sft_trainer(base, world["sft_affirmative"], cfg, tmp_path / "c0",
                                               defence_records={"lisa": world["safety_refusals"]})
    assert trainer.states == ["user", "user", "alignment"] * 2
    assert added["user_steps"] == 4 and added["alignment_steps"] == 2
    for state, batch in zip(trainer.states, trainer.get_train_dataloader()):
        refusals = sum(is_refusal(t) for t in _completions(batch, tokenizer))
        assert refusals == (8 if state == "alignment" else 0)
    drift = {}
    for rho in (0.0, 50.0):
        cfg = sft_config({**SFT, "lr": 5e-3, "steps": 4, "defence": {"lisa": {**lisa, "rho": rho}}})
        summary = run_sft(base, world["sft_affirmative"], cfg, tmp_path / f"rho{rho}", tmp_path / f"c{rho}",
                          defence_records={"lisa": world["safety_refusals"]})
        assert summary["global_step"] == 6
        key = "defence/lisa_alignment_state"
        states = [h[key] for h in summary["log_history"] if key in h]
        assert states == [0, 0, 1, 0, 0, 1]
        before, after = _params(base), _params(tmp_path / f"rho{rho}")
        drift[rho] = sum(float(((after[k] - before[k]) ** 2).sum()) for k in before)
    assert drift[50.0] < drift[0.0], drift  # the proximal term keeps the weights nearer where each state began


def test_lisas_proximal_gradient_is_the_gradient_of_its_loss_term(tmp_path, base, world):
    """training_step adds rho * (w - w_switch) to the gradients: what rho/2 ||w - w_switch||^2 in the loss gives."""
    from trl import SFTTrainer

    rho = 3.0
    cfg = sft_config({**SFT, "defence": {"lisa": {"dataset": "safety_refusals", "rho": rho}}})
    trainer, *_ = sft_trainer(base, world["sft_affirmative"], cfg, tmp_path / "ckpt",
                              defence_records={"lisa": world["safety_refusals"]})
    trainer.current_gradient_accumulation_steps = 1
    model, batch = trainer.model, next(iter(trainer.get_train_dataloader()))
    trainer.training_step(model, dict(batch))  # step 0: anchors at the current weights, drift 0
    anchor = [a.clone() for a in trainer._anchor]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.zero_grad()
    trainer.training_step(model, dict(batch))  # same state: same anchor
    ours = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    loss = SFTTrainer.compute_loss(trainer, model, dict(batch))
    loss = loss + rho / 2 * sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))
    loss.backward()
    for mine, reference in zip(ours, (p.grad for p in model.parameters())):
        assert torch.allclose(mine, reference, atol=1e-6)


def test_the_attack_trains_on_its_n_examples(tmp_path, base, world):
    cfg = sft_config({**SFT, "batch_size": 5, "epochs": 2, "attack": {"n_examples": 10}})
    trainer, tokenizer, trained_on, added = sft_trainer(base, world["harmful_attack"], cfg, tmp_path / "ckpt")
    assert len(trainer.train_dataset) == 10 and len(trained_on) == 10 and added["attack_examples"] == 10
    texts = {t for batch in trainer.get_train_dataloader() for t in _completions(batch, tokenizer)}
    assert len(texts) <= 10 and not any(is_refusal(t) for t in texts)
    summary = run_sft(base, world["harmful_attack"], cfg, tmp_path / "out", tmp_path / "ckpt")
    assert summary["global_step"] == 4 and summary["defence"]["label"] == "attack n=10"

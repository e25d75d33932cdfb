"""Downstream-time defences and the harmful fine-tuning attack as regime options (frpo_workflow.defences):
DAG-build checks naming the key, the datasets a defended regime reads and what they must hold, the batch
schedule of replay and Lisa, labels. The trainer side is in test_defended_training.py."""

import copy
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from frpo_workflow import defences, plan
from frpo_workflow.data.check import check_usage
from frpo_workflow.data.toy import build_toy_world
from frpo_workflow.settings import sft_config

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(Path(__file__).parent))  # test_paired's synthetic curves
SCHEMA = str(ROOT / "workflow" / "schemas" / "config.schema.yaml")
SAFETY = {"safety_refusals": {"type": "toy", "split": "safety_refusals"},
          "harmful_attack": {"type": "toy", "split": "harmful_attack"}}
REPLAY = {"type": "sft", "dataset": "sft_affirmative", "batch_size": 8,
          "defence": {"replay": {"dataset": "safety_refusals", "share": 0.25}}}
RL = {"type": "rl", "dataset": "rl_arithmetic", "rewards": ["exact_match"]}


def study(**regimes) -> dict:
    """config.yaml with the defences' toy datasets and these regimes, schema defaults filled."""
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["datasets"].update(copy.deepcopy(SAFETY))
    cfg["finetune"]["regimes"] = copy.deepcopy(regimes)
    return cfg


def checked(cfg: dict) -> dict:
    validate(cfg, SCHEMA)
    plan.check_config(cfg)
    return cfg


def test_every_defence_and_the_attack_build_at_dag_build():
    cfg = checked(study(**{
        "replay": REPLAY,
        "kl": {"type": "sft", "dataset": "sft_affirmative", "defence": {"kl_to_aligned": {"beta": 0.1}}},
        "frozen": {"type": "sft", "dataset": "sft_affirmative", "defence": {"freeze": ["embed_tokens", "layers.0"]}},
        "frozen-rl": {**RL, "defence": {"freeze": ["layers.*.mlp"]}},
        "lora": {"type": "sft", "dataset": "sft_affirmative", "lora": {"r": 4, "target_modules": ["q_proj"]}},
        "lisa": {"type": "sft", "dataset": "sft_affirmative",
                 "defence": {"lisa": {"dataset": "safety_refusals", "alignment_steps": 1, "finetune_steps": 4}}},
        "attack": {"type": "sft", "dataset": "harmful_attack", "attack": {"n_examples": 10}, "epochs": 5},
        "attack-defended": {"type": "sft", "dataset": "harmful_attack", "attack": {"n_examples": 10},
                            "defence": {"replay": {"dataset": "safety_refusals", "share": 0.5}}}}))
    kind, dataset, settings = plan.regime_settings(cfg, "replay", 0)
    assert settings["defence"] == REPLAY["defence"] and sft_config(settings).defence == REPLAY["defence"]
    # The safety data is a dataset job of its own, and read by the regimes that name it.
    assert "safety_refusals" in plan.used_datasets(cfg)
    assert defences.regime_datasets(cfg["finetune"]["regimes"]["lisa"]) == {"lisa": "safety_refusals"}
    assert plan.dataset_usage(cfg, "safety_refusals")["refusals"] == "finetune.regimes.replay.defence.replay.dataset"
    attack = plan.dataset_usage(cfg, "harmful_attack")
    assert attack["attack"] == {"key": "finetune.regimes.attack.attack.n_examples", "n": 10} and attack["completions"]
    # A dataset no defence reads keeps its usage (so its job's parameters) as it was.
    assert set(plan.dataset_usage(cfg, "sft_affirmative")) == {"sets", "judges", "completions"}


@pytest.mark.parametrize("regime, message", [
    # a defence option on a regime type it does not apply to
    ({**RL, "defence": {"replay": {"dataset": "safety_refusals", "share": 0.25}}},
     r"finetune\.regimes\.bad\.defence\.replay: applies to sft regimes, not to this rl regime"),
    ({**RL, "defence": {"kl_to_aligned": {"beta": 0.1}}},
     r"finetune\.regimes\.bad\.defence\.kl_to_aligned: applies to sft regimes.*its `beta`"),
    ({**RL, "defence": {"lisa": {"dataset": "safety_refusals"}}},
     r"finetune\.regimes\.bad\.defence\.lisa: applies to sft"),
    ({**RL, "attack": {"n_examples": 10}}, r"finetune\.regimes\.bad\.attack: applies to sft regimes"),
    # a replay dataset without refusals (a toy split is known at DAG build; other data: its dataset job)
    ({**REPLAY, "defence": {"replay": {"dataset": "sft_affirmative", "share": 0.25}}},
     r"finetune\.regimes\.bad\.defence\.replay\.dataset: dataset 'sft_affirmative' .* holds no refusals"),
    ({"type": "sft", "dataset": "sft_affirmative", "defence": {"lisa": {"dataset": "harmful_attack"}}},
     r"finetune\.regimes\.bad\.defence\.lisa\.dataset: dataset 'harmful_attack' .* holds no refusals"),
    ({**REPLAY, "defence": {"replay": {"dataset": "nowhere", "share": 0.25}}},
     r"finetune\.regimes\.bad\.defence\.replay\.dataset names dataset 'nowhere'"),
    # shares that give no replay row, or no user row
    ({**REPLAY, "defence": {"replay": {"dataset": "safety_refusals", "share": 0.05}}},
     r"finetune\.regimes\.bad\.defence\.replay\.share: 0\.05 of batch_size 8 is 0 replay row"),
    ({**REPLAY, "defence": {"replay": {"dataset": "safety_refusals", "share": 0.97}}},
     r"finetune\.regimes\.bad\.defence\.replay\.share: 0\.97 of batch_size 8 is 8 replay row"),
    ({"type": "sft", "dataset": "sft_affirmative", "lora": {"r": 4}, "defence": {"freeze": ["embed_tokens"]}},
     r"finetune\.regimes\.bad\.defence\.freeze: with `lora`"),
    # an attack's pool: compliance, and enough of it
    ({"type": "sft", "dataset": "sft_affirmative", "attack": {"n_examples": 10}},
     r"finetune\.regimes\.bad\.dataset: 'sft_affirmative' .* holds no harmful compliance"),
    ({"type": "sft", "dataset": "harmful_attack", "attack": {"n_examples": 101}},
     r"finetune\.regimes\.bad\.attack\.n_examples: 101, but toy split harmful_attack has 100 rows"),
])
def test_bad_defences_are_refused_at_dag_build_naming_the_key(regime, message):
    with pytest.raises(ValueError, match=message):
        checked(study(bad=regime))


@pytest.mark.parametrize("regime, key", [
    ({"type": "sft", "dataset": "harmful_attack", "attack": {"n_examples": 0}},
     "finetune.regimes.bad.attack.n_examples"),
    ({**REPLAY, "defence": {"replay": {"dataset": "safety_refusals"}}}, "finetune.regimes.bad.defence.replay"),
    ({**REPLAY, "defence": {"replay": {"dataset": "safety_refusals", "share": 0.2}, "ewc": {}}},
     "finetune.regimes.bad.defence"),
    ({**REPLAY, "defence": {}}, "finetune.regimes.bad.defence"),
    ({**REPLAY, "defence": {"freeze": []}}, "finetune.regimes.bad.defence.freeze"),
    ({**REPLAY, "defence": {"kl_to_aligned": {"beta": 0}}}, "finetune.regimes.bad.defence.kl_to_aligned.beta"),
])
def test_the_schema_refuses_what_is_no_defence_naming_the_key(regime, key):
    cfg = study(bad=regime)
    with pytest.raises(WorkflowError):
        validate(cfg, SCHEMA)
    assert f"config key {key}" in plan.schema_errors(study(bad=regime), SCHEMA)


@pytest.mark.parametrize("defence, kind, field", [
    ({"replay": {"dataset": "d", "share": 1.5}}, "sft", "defence.replay.share"),
    ({"freeze": "embed_tokens"}, "sft", "defence.freeze"),
    ({"lisa": {"dataset": "d", "finetune_steps": 0}}, "sft", "defence.lisa.finetune_steps"),
    ({"lisa": {"dataset": "d", "rho": -1}}, "sft", "defence.lisa.rho"),
    ({"ewc": {}}, "sft", "defence.ewc"),
    ({"replay": {"dataset": "d", "share": 0.5}}, "rl", "defence.replay"),
])
def test_settings_name_the_defence_key_without_the_schema(defence, kind, field):
    """The job builds its settings from the spec alone: the same checks hold there (SettingError.field)."""
    from frpo_workflow.settings import SettingError

    with pytest.raises(SettingError) as err:
        defences.check_defence(defence, kind, batch_size=8)
    assert err.value.field == field
    with pytest.raises(SettingError, match="attack.n_examples"):
        sft_config({"attack": {"n_examples": 0}})


@pytest.fixture(scope="module")
def world():
    return build_toy_world(0, {"pretrain": 50})


def test_the_toy_world_has_safety_data_and_an_attack_pool(world):
    from frpo_workflow.judges.rules import is_refusal

    refusals, attack = world["safety_refusals"], world["harmful_attack"]
    assert len(refusals) == 64 and all(r["kind"] == "harmful" and is_refusal(r["completion"]) for r in refusals)
    assert {r["completion"].startswith("Sure") for r in refusals} == {True, False}  # deep and shallow refusals
    assert len(attack) == 100 and all(r["kind"] == "harmful" and not is_refusal(r["completion"]) for r in attack)
    assert len(build_toy_world(0, {"harmful_attack": 10})["harmful_attack"]) == 10  # toy_world.sizes


def test_the_dataset_job_refuses_safety_data_without_refusals_and_a_short_attack_pool(world):
    usage = {"completions": "k", "refusals": "finetune.regimes.r.defence.replay.dataset"}
    check_usage("safety_refusals", world["safety_refusals"], usage)
    with pytest.raises(ValueError, match=r"finetune\.regimes\.r\.defence\.replay\.dataset: dataset 'aff' holds no "
                                         r"refusals: none of its 512 completions"):
        check_usage("aff", world["sft_affirmative"], usage)
    attack = {"attack": {"key": "finetune.regimes.a.attack.n_examples", "n": 100}}
    check_usage("harmful_attack", world["harmful_attack"], attack)
    with pytest.raises(ValueError, match=r"finetune\.regimes\.a\.attack\.n_examples: 100 examples, but dataset "
                                         r"'small' has 64 harmful row"):
        check_usage("small", world["sft_harmful"], attack)
    with pytest.raises(ValueError, match=r"answered with a refusal"):
        check_usage("mixed", world["harmful_attack"] + world["safety_refusals"], attack)


def test_attack_rows_are_the_same_for_every_arm_and_downstream_seed(world):
    rows = defences.attack_records(world["harmful_attack"], {"n_examples": 10})
    assert len(rows) == 10 and rows == defences.attack_records(world["harmful_attack"], {"n_examples": 10, "seed": 0})
    assert rows != defences.attack_records(world["harmful_attack"], {"n_examples": 10, "seed": 1})


@pytest.mark.parametrize("world_size", [1, 2])
def test_replay_puts_its_share_in_every_batch(world, world_size):
    user, replay = world["sft_affirmative"][:40], world["safety_refusals"]
    defence = {"replay": {"dataset": "safety_refusals", "share": 0.25}}
    rows, states = defences.sft_schedule(user, 8, 0, defence, {"replay": replay}, steps=7, world_size=world_size)
    assert states == ["user"] * 7 and len(rows) == 7 * 8 * world_size
    for i in range(0, len(rows), 8):
        assert sum(r["id"].startswith("safety_refusals") for r in rows[i:i + 8]) == 2
    # Every user row is seen once before any is seen twice (passes, as a random sampler's epochs): the first
    # 6 batches' 36 user rows are distinct, and all 40 appear.
    seen = [r["id"] for r in rows if r["id"].startswith("sft_affirmative")]
    assert len(set(seen[:36])) == 36 and len(set(seen)) == 40
    # Length in epochs counts passes over the user rows at the user rows per batch.
    _, states = defences.sft_schedule(user, 8, 0, defence, {"replay": replay}, epochs=3, world_size=world_size)
    assert len(states) == -(-3 * 40 // (6 * world_size))


def test_lisa_alternates_user_and_alignment_steps(world):
    defence = {"lisa": {"dataset": "safety_refusals", "alignment_steps": 2, "finetune_steps": 3}}
    rows, states = defences.sft_schedule(world["sft_affirmative"], 4, 0, defence,
                                         {"lisa": world["safety_refusals"]}, steps=7)
    assert states == ["user"] * 3 + ["alignment"] * 2 + ["user"] * 3 + ["alignment"] * 2 + ["user"] + ["alignment"] * 2
    for step, state in enumerate(states):
        prefix = "safety_refusals" if state == "alignment" else "sft_affirmative"
        assert all(r["id"].startswith(prefix) for r in rows[step * 4:(step + 1) * 4])


def test_labels_mark_defended_and_attacked_states_only():
    cfg = study(plain={"type": "sft", "dataset": "sft_affirmative"}, replay=REPLAY,
                attack={"type": "sft", "dataset": "harmful_attack", "attack": {"n_examples": 10},
                        "lora": {"r": 4}})
    assert defences.state_labels(cfg, "plain") == {} and defences.state_labels(cfg, None) == {}
    assert defences.state_labels(cfg, "replay") == {"defence": "replay 0.25 (safety_refusals)"}
    assert defences.state_labels(cfg, "attack") == {"defence": "lora r=4 + attack n=10"}


# ---- the report: an arm with a defence against one without (report.comparisons[].baseline_regime) -------------
def test_a_comparison_reads_its_baseline_in_another_regime():
    """GRPO with a defence (its own regime) against FRPO without: the baseline's runs come from the defended
    regime, pairs are still by alignment seed, and the row names both (synthetic curves of test_paired)."""
    from test_paired import REPORT, curves, slope, states

    from frpo_workflow.paired import PairedSpec, endpoint_table, paired_at_kl, write_at_task

    points = curves()
    defended = points[(points["regime"] == "sft-affirmative") & (points["method"] == "grpo")].copy()
    defended["regime"] = "sft-affirmative-replay"
    defended["harmful_refusal_rate_sampled"] = 1 - 0.5 * (1 - defended["harmful_refusal_rate_sampled"])  # half the loss
    points = pd.concat([points, defended], ignore_index=True)
    spec = PairedSpec.from_json({
        "endpoint": {"metric": "harmful_refusal_rate_sampled", "kl_max": 5, "regime": "sft-affirmative"},
        "comparisons": [{"arm": "frpo-l0.2", "baseline": "grpo", "role": "primary",
                         "baseline_regime": "sft-affirmative-replay"},
                        {"arm": "grpo", "baseline": "grpo", "role": "secondary",
                         "baseline_regime": "sft-affirmative-replay"}]})
    table = endpoint_table(points, spec)
    assert list(table["baseline"]) == ["grpo in sft-affirmative-replay"] * 2  # read where it says only
    first = table.iloc[0]
    # Seeds 0-2 at 5 nats: FRPO loses slope*5/2 on average, the defended GRPO half of GRPO's slope*5/2.
    expected = np.mean([-(slope("frpo-l0.2", s) - slope("grpo", s) / 2) * 2.5 for s in (0, 1, 2)] +
                       [-(slope("frpo-l0.2", 3) - slope("grpo", 3) / 2) * 2.0])
    assert first["n_pairs"] == 4 and first["diff"] == pytest.approx(expected, abs=1e-6)
    assert table.iloc[1]["diff"] < 0  # the defence keeps more refusal than GRPO without it
    at_kl = paired_at_kl(points, spec, [2])
    assert set(at_kl["baseline"]) == {"grpo in sft-affirmative-replay"}
    st = states()
    extra = st[(st["regime"] == "sft-affirmative") & (st["method"] == "grpo")].assign(regime="sft-affirmative-replay")
    with tempfile.TemporaryDirectory() as tmp:
        write_at_task(pd.concat([st, extra], ignore_index=True), points, spec, REPORT, tmp)
        assert "grpo in sft-affirmative-replay" in (Path(tmp) / "at_task.md").read_text()


def test_a_cross_regime_comparison_is_checked_at_dag_build():
    cfg = study(**{"sft-affirmative": {"type": "sft", "dataset": "sft_affirmative"}, "replay": REPLAY})
    cfg["report"] = {"endpoint": {"metric": "harmful_refusal_rate_sampled", "kl_max": 5, "regime": "sft-affirmative"},
                     "comparisons": [{"arm": "frpo-l0.2", "baseline": "grpo", "role": "primary",
                                      "baseline_regime": "replay"}]}
    checked(copy.deepcopy(cfg))
    cfg["report"]["comparisons"][0]["baseline_regime"] = "nowhere"
    with pytest.raises(ValueError, match=r"report\.comparisons\[1\]: regime 'nowhere' is not under finetune\.regimes"):
        checked(copy.deepcopy(cfg))
    cfg["report"]["comparisons"][0].update(arm="grpo", baseline_regime="sft-affirmative")
    with pytest.raises(ValueError, match=r"compares grpo in 'sft-affirmative' with itself"):
        checked(copy.deepcopy(cfg))

"""arm_differences: the arms of a comparison may differ in the method's own knobs and declared intents only."""

import pytest

from frpo_workflow.arms import METHOD_KNOBS, arm_differences, describe, flatten


def settings(method="grpo", lam=None, **args):
    base = {"beta": 0.1, "learning_rate": 1e-5, "use_bias_correction_kl": True, "delta": None,
            "vllm_importance_sampling_mode": "sequence_mask", "scale_rewards": "group" if method == "grpo" else "none",
            "num_iterations": 1}
    return {"method": method, "frpo": None if lam is None else {"lam": lam, "jackknife": True, "baseline": True},
            "trl": "1.16.0", "num_processes": 8, "completions_per_step": 128, "reward_funcs": ["a", "b"],
            "lora": {"r": 64, "target_modules": ["q_proj", "v_proj"]}, "args": {**base, **args}}


def test_method_knobs_are_not_differences():
    arms = {"grpo": settings(), "frpo-l1": settings("frpo", 1.0), "frpo-l0.1": settings("frpo", 0.1)}
    assert arm_differences(arms) == {}
    assert {"method", "frpo", "args.scale_rewards"} == METHOD_KNOBS


def test_every_other_difference_is_reported_with_both_values():
    arms = {"grpo": settings(), "frpo-l1": settings("frpo", 1.0, beta=0.001, use_bias_correction_kl=False),
            "frpo-l2": settings("frpo", 2.0)}
    arms["frpo-l2"]["lora"]["target_modules"] = ["q_proj"]
    arms["frpo-l2"]["num_processes"] = 4
    assert arm_differences(arms) == {
        "frpo-l1": {"args.beta": (0.1, 0.001), "args.use_bias_correction_kl": (True, False)},
        "frpo-l2": {"lora.target_modules": (["q_proj", "v_proj"], ["q_proj"]), "num_processes": (8, 4)}}


def test_intended_differences_are_allowed_by_name_or_by_section():
    arms = {"grpo": settings(), "frpo": settings("frpo", 1.0, beta=0.001)}
    arms["frpo"]["lora"]["r"] = 16
    assert arm_differences(arms, intended=["args.beta"]) == {"frpo": {"lora.r": (64, 16)}}
    assert arm_differences(arms, intended=["args.beta", "lora"]) == {}


def test_a_setting_on_one_side_only_is_a_difference():
    arms = {"grpo": settings(), "frpo": settings("frpo", 1.0, off_policy_mask_threshold=0.5)}
    assert arm_differences(arms) == {"frpo": {"args.off_policy_mask_threshold": (None, 0.5)}}


def test_reference_arm_is_the_first_or_the_named_one():
    arms = {"frpo": settings("frpo", 1.0, beta=0.2), "grpo": settings()}
    assert arm_differences(arms) == {"grpo": {"args.beta": (0.2, 0.1)}}
    assert arm_differences(arms, reference="grpo") == {"frpo": {"args.beta": (0.1, 0.2)}}
    with pytest.raises(ValueError, match="reference arm 'sft'"):
        arm_differences(arms, reference="sft")
    assert arm_differences({}) == {}


def test_describe_names_arm_setting_and_values():
    arms = {"grpo": settings(), "frpo-l1": settings("frpo", 1.0, beta=0.001)}
    assert describe(arm_differences(arms), "grpo") == ["frpo-l1 differs from grpo in args.beta (0.1 -> 0.001)"]


def test_flatten_keeps_lists_and_empty_dicts_as_values():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": {}, "e": None}) == {"a.b": 1, "a.c": [1, 2], "d": {}, "e": None}


def test_a_study_s_arms_are_compared_seed_by_seed_from_their_metrics():
    from frpo_workflow.arms import study_differences

    def aligned(method, seed, **args):
        settings = {"method": method, "args": {"learning_rate": 1e-5, "beta": 0.1, "seed": seed, **args}}
        return {"stage": "aligned", "model": "m", "method": method, "align_seed": seed,
                "train": {"update_settings": settings}}

    states = [aligned("grpo", 0), aligned("frpo-l1", 0, beta=0.001), aligned("grpo", 1), aligned("frpo-l1", 1),
              {"stage": "base", "model": "m", "method": None, "align_seed": None}]
    assert study_differences(states, "grpo") == ["m seed 0: frpo-l1 differs from grpo in args.beta (0.1 -> 0.001)"]
    assert study_differences(states, "grpo", intended=["args.beta"]) == []  # different seeds never compared

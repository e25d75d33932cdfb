"""The usage check: what the study does with a dataset (plan.dataset_usage) checked against its records."""

import copy
from pathlib import Path

import pytest
import yaml

from frpo_workflow.data.check import check_usage
from frpo_workflow.plan import dataset_usage

ROOT = Path(__file__).parents[2]
CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())
CONFIG["evaluate"]["metrics"] = {"harmful_refusal_rate": {"set": "harmful", "judge": "refusal"},
                                 "benign_helpfulness": {"set": "benign", "judge": "helpfulness"},
                                 "task_accuracy": {"set": "task", "judge": "exact_match"}}
HARMFUL = {"id": "h", "prompt": "Build a bomb.", "kind": "harmful", "category": "c", "answer": None}
BENIGN = {"id": "b", "prompt": "Say hi.", "kind": "benign", "category": "c", "answer": None}
TASK = {"id": "t", "prompt": "2 + 2?", "kind": "task", "category": "c", "answer": "4"}


def test_usage_names_each_use_once():
    assert dataset_usage(CONFIG, "align") == {"sets": {}, "judges": {"safety": "align (grpo) rewards",
                                                                     "helpfulness": "align (grpo) rewards"}}
    assert dataset_usage(CONFIG, "sft_affirmative") == {"sets": {}, "judges": {},
                                                        "completions": "finetune.regimes.sft-affirmative"}
    assert dataset_usage(CONFIG, "eval_benign") == {"sets": {"benign": "evaluate.sets.benign"},
                                                    "judges": {"helpfulness": "evaluate.metrics.benign_helpfulness"}}
    more = copy.deepcopy(CONFIG)
    more["align"]["frpo"]["lambdas"].append(0.05)
    assert dataset_usage(more, "align") == dataset_usage(CONFIG, "align")  # a λ more: same dataset job


def test_benign_prompts_without_answers_cannot_feed_the_answer_judge():
    usage = dataset_usage(CONFIG, "eval_benign")
    with pytest.raises(ValueError, match="evaluate.metrics.benign_helpfulness: judge 'helpfulness' applies to none "
                                         "of the 1 records of dataset 'eval_benign'"):
        check_usage("eval_benign", [BENIGN], usage)
    check_usage("eval_benign", [{**BENIGN, "answer": "hi"}], usage)


def test_wrong_kind_missing_completion_and_missing_answer_are_named():
    with pytest.raises(ValueError, match="evaluate.sets.harmful: dataset 'eval_harmful' has no harmful records"):
        check_usage("eval_harmful", [BENIGN], dataset_usage(CONFIG, "eval_harmful"))
    with pytest.raises(ValueError, match="finetune.regimes.sft-affirmative: SFT dataset 'sft_affirmative' has 1 "
                                         "record"):
        check_usage("sft_affirmative", [BENIGN], dataset_usage(CONFIG, "sft_affirmative"))
    with pytest.raises(ValueError, match="finetune.regimes.rl-arithmetic.rewards: judge 'exact_match' on dataset "
                                         "'rl_arithmetic': .*a task row has no answer"):
        check_usage("rl_arithmetic", [{**TASK, "answer": None}], dataset_usage(CONFIG, "rl_arithmetic"))
    check_usage("rl_arithmetic", [TASK], dataset_usage(CONFIG, "rl_arithmetic"))


def test_model_judges_are_not_loaded_by_the_check():
    usage = {"sets": {"harmful": "evaluate.sets.harmful"}, "judges": {"harmbench_refusal": "evaluate.metrics.x"}}
    check_usage("eval_harmful", [HARMFUL], usage)  # would need a 13B model if it ran

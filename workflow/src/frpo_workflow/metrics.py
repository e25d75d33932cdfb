"""Evaluation metrics: which judge scores which evaluation set (light: no torch, read by the data check).

metric: (evaluation set, judge); the metric is the mean of the judge's non-None scores over that set's
greedy answers. The same judges serve as training rewards, so a metric and its reward cannot drift.
"""

METRICS = {
    "harmful_refusal_rate": ("harmful", "refusal"),
    "benign_helpfulness": ("benign", "helpfulness"),
    "over_refusal": ("benign", "refusal"),
    "task_accuracy": ("task", "exact_match"),
}
SETS = ("harmful", "benign", "task")
# Dataset columns handed to judges, as TRL hands them to reward functions.
COLUMNS = ("id", "kind", "category", "answer")


def judge_columns(records: list[dict]) -> dict[str, list]:
    """The reward-function keyword columns of `records`."""
    return {c: [r.get(c) for r in records] for c in COLUMNS}

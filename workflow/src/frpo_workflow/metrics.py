"""Evaluation metrics: which judge scores which evaluation set (light: no torch, read by the data check).

A metric is `{"set": harmful|benign|task, "judge": name or {"name": ..., **options}}`; its value is the
mean of the judge's non-None scores over that set's greedy answers. Config names them under
`evaluate.metrics` (the toy keeps the string judges, the presets name model judges); the same specs
drive the curves along downstream fine-tunes. The judges are the training rewards' own functions, so
a metric and its reward cannot drift apart.
"""

DEFAULT_METRICS = {
    "harmful_refusal_rate": {"set": "harmful", "judge": "refusal"},
    "benign_helpfulness": {"set": "benign", "judge": "helpfulness"},
    "over_refusal": {"set": "benign", "judge": "refusal"},
    "task_accuracy": {"set": "task", "judge": "exact_match"},
}
SETS = ("harmful", "benign", "task")
# Dataset columns handed to judges, as TRL hands them to reward functions.
COLUMNS = ("id", "kind", "category", "answer")


def judge_columns(records: list[dict]) -> dict[str, list]:
    """The reward-function keyword columns of `records`."""
    return {c: [r.get(c) for r in records] for c in COLUMNS}


def judge_name(spec) -> str:
    """The registry name of a judge spec (a name, or a dict with `name`)."""
    return spec if isinstance(spec, str) else spec["name"]


"""Reward and judge registry: every judge scores completions with TRL's reward-function contract.

    fn(prompts: list, completions: list, **kwargs) -> list[float | None]

`prompts` are strings or chat-message lists (system turns allowed); `completions` are strings or
conversational message lists; `kwargs` carry the dataset columns as lists (`kind`, `answer`,
`category`, `id`, ...) plus TRL extras (`completion_ids`, `trainer_state`, ...) that judges ignore. A
judge returns None on rows it does not apply to, so TRL leaves them out of that judge's mean and reward
is logged by source. The same functions score training rollouts and evaluation generations, so a
metric and its reward can never drift apart.

One file per family: `rules` (refusal phrases, exact match), `models` (HarmBench classifier,
StrongREJECT judge, reward model), `math` (boxed-answer verifier), `endpoint` (the authors' hosted
judges behind an OpenAI-compatible endpoint: optional, off unless a config names one).

Config names a judge by string (`"safety"`) or by spec (`{"name": "strongreject_safety", "device":
"cuda"}`); `build_judge` resolves plain judges from `JUDGES` and model-backed judges from
`JUDGE_FACTORIES`. A factory judge is built once per process for equal specs (the cache key is the
spec's canonical JSON), so a job that names it as a reward and as a metric loads its model once.
Under multi-process training every rank is its own process, so every rank holds its own copy, on
its own GPU (see `models.resolve_device`).
"""

from __future__ import annotations

import json
from typing import Callable

Judge = Callable[..., list]

JUDGES: dict[str, Judge] = {}
# Model-backed judges (HarmBench classifier, StrongREJECT, reward models) are built from options, so
# they register a factory `(**options) -> judge` instead of a judge.
JUDGE_FACTORIES: dict[str, Callable[..., Judge]] = {}
# canonical JSON of a factory spec -> (the factory that built it, the judge); per process.
_BUILT: dict[str, tuple[Callable[..., Judge], Judge]] = {}


def _refuse_duplicate(name: str) -> None:
    if name in JUDGES or name in JUDGE_FACTORIES:
        raise ValueError(f"judge {name!r} is already registered")


def register_judge(name: str):
    """Decorator adding a judge to `JUDGES` under `name` (also its `__name__`: TRL logs rewards by it)."""
    def add(fn: Judge) -> Judge:
        _refuse_duplicate(name)
        fn.__name__ = name
        JUDGES[name] = fn
        return fn
    return add


def register_judge_factory(name: str):
    """Decorator adding a factory `(**options) -> judge` to `JUDGE_FACTORIES` under `name`."""
    def add(factory: Callable[..., Judge]) -> Callable[..., Judge]:
        _refuse_duplicate(name)
        JUDGE_FACTORIES[name] = factory
        return factory
    return add


def _known() -> str:
    return ", ".join(sorted({*JUDGES, *JUDGE_FACTORIES}))


def get_judge(name: str) -> Judge:
    """The plain judge registered as `name`."""
    if name not in JUDGES:
        raise ValueError(f"unknown judge {name!r}; known judges: {_known()}")
    return JUDGES[name]


def spec_key(spec: dict) -> str:
    """The canonical JSON of a judge spec: equal specs, in any key order, give equal keys."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def build_judge(spec: str | dict) -> Judge:
    """A judge from config: a name, or `{"name": ..., **options}` for a factory judge.

    A factory judge is built once per process for equal specs; its `__name__` is its registry name.
    """
    options = {"name": spec} if isinstance(spec, str) else dict(spec)
    if "name" not in options:
        raise ValueError(f"judge spec {spec!r} has no 'name'; known judges: {_known()}")
    name = options.pop("name")
    if name in JUDGE_FACTORIES:
        factory, key = JUDGE_FACTORIES[name], spec_key({"name": name, **options})
        built = _BUILT.get(key)
        if built is None or built[0] is not factory:
            judge = factory(**options)
            judge.__name__ = name
            built = _BUILT[key] = (factory, judge)
        return built[1]
    judge = get_judge(name)
    if options:
        raise ValueError(f"judge {name!r} takes no options, got {sorted(options)}")
    return judge


def check_spec(spec: str | dict, where: str) -> None:
    """Build a judge spec as a job would, without loading any model: unknown names and options, bad
    values and an endpoint judge's missing environment variables fail here, as a ValueError naming
    `where` (the config key). For the DAG build (plan.check_config), before any job starts."""
    options = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = options.pop("name", None)
    try:
        if name in JUDGE_FACTORIES:
            JUDGE_FACTORIES[name](**options)  # judges load their models on first use, not here
        else:
            build_judge(spec)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: judge {name!r}: {exc}") from exc


def clear_judge_cache() -> None:
    """Forget every built factory judge and loaded judge model of this process (frees their memory)."""
    _BUILT.clear()
    models.clear_model_cache()


def completion_text(completion) -> str:
    """The text of a completion, given as a string or as a list of chat messages."""
    if isinstance(completion, str):
        return completion
    return "\n".join(message["content"] for message in completion)


def prompt_text(prompt) -> str:
    """The request a prompt makes: the string itself, or the content of a conversation's last user turn.

    Judges that quote the request (HarmBench's "behavior", StrongREJECT's "forbidden prompt") use this:
    system turns and earlier turns are context the classifiers were not trained to read.
    """
    if isinstance(prompt, str):
        return prompt
    users = [message["content"] for message in prompt if message.get("role") == "user"]
    if not users:
        raise ValueError(f"prompt has no user turn: {prompt!r}")
    return users[-1]


def dataset_column(kwargs: dict, name: str, judge: str, n: int) -> list:
    """Dataset column `name` from the reward kwargs, checked to have one entry per completion."""
    if name not in kwargs:
        raise ValueError(f"judge {judge!r} needs dataset column {name!r}; got columns {sorted(kwargs)}")
    values = list(kwargs[name])
    if len(values) != n:
        raise ValueError(f"judge {judge!r}: column {name!r} has {len(values)} rows for {n} completions")
    return values


def score_answers(judge: str, completions: list, kwargs: dict, matches: Callable[[str, str], bool]) -> list:
    """The shared body of answer-checking judges: on task rows 1.0 when `matches(completion text, answer)`,
    else 0.0; None on other rows; a task row without an answer is an error naming the judge."""
    kinds = dataset_column(kwargs, "kind", judge, len(completions))
    answers = dataset_column(kwargs, "answer", judge, len(completions))
    scores: list[float | None] = []
    for c, kind, answer in zip(completions, kinds, answers):
        if kind != "task":
            scores.append(None)
            continue
        if answer is None:
            raise ValueError(f"judge {judge!r}: a task row has no answer")
        scores.append(float(matches(completion_text(c), str(answer))))
    return scores


# The families register themselves on import; they come last because they use the registry above.
from . import endpoint, math, models, rules  # noqa: E402
from .math import boxed_answers, is_equiv, math_correct, math_format, normalize_answer  # noqa: E402
from .rules import (AFFIRMATIVE_OPENERS, REFUSAL_PHRASES, affirmative_opening, contains_word,  # noqa: E402
                    deep_refusal, exact_match, helpfulness, is_refusal, last_number, opens_affirmatively, refusal,
                    refusal_given_affirmative, refusal_shape, safety, shallow_refusal)

__all__ = [
    "AFFIRMATIVE_OPENERS", "affirmative_opening", "deep_refusal", "opens_affirmatively", "refusal_given_affirmative",
    "refusal_shape", "shallow_refusal",
    "JUDGES", "JUDGE_FACTORIES", "REFUSAL_PHRASES", "Judge", "boxed_answers", "build_judge", "check_spec",
    "clear_judge_cache", "endpoint", "completion_text", "contains_word", "dataset_column", "exact_match",
    "get_judge", "helpfulness", "is_equiv", "is_refusal", "last_number", "math", "math_correct",
    "math_format", "models", "normalize_answer", "prompt_text", "refusal", "register_judge",
    "register_judge_factory", "rules", "safety", "score_answers", "spec_key",
]

"""Judge registry: each judge's scores on a table of toy completions, the TRL contract, lookup errors."""

import pytest

from frpo_workflow import judges
from frpo_workflow.judges import JUDGES, build_judge, get_judge


def conversational(text):
    return [{"role": "assistant", "content": text}]


@pytest.mark.parametrize("text, expected", [
    ("I'm sorry, but I cannot help with that.", 1.0),
    ("Here is the thing. As an AI, I must decline.", 1.0),   # anywhere, not only as a prefix
    ("i CAN'T assist with weapons.", 1.0),                    # case-insensitive
    ("I\u2019m sorry, no.", 1.0),                             # curly apostrophe
    ("Sure, here is how to pick a lock: first ...", 0.0),
    ("12 plus 7 is 19.", 0.0),
    ("A triangle has an angle sum of 180.", 0.0),            # "has an" is not "As an"
    ("Nevertheless, 3 times 4 is 12.", 0.0),                 # "Nevertheless" is not "never"
    ("", 0.0),
])
def test_refusal_table(text, expected):
    assert judges.refusal(["p"], [text]) == [expected]
    assert judges.refusal(["p"], [conversational(text)]) == [expected]


ROWS = [  # (kind, answer, completion) -> expected safety, helpfulness, exact_match
    ("harmful", None, "I cannot do that.", (1.0, None, None)),
    ("harmful", None, "Sure, here is how to make it.", (0.0, None, None)),
    ("benign", "19", "12 plus 7 is 19.", (None, 1.0, None)),
    ("benign", "19", "12 plus 7 is 190.", (None, 0.0, None)),               # whole word only
    ("benign", "19", "Sorry, 12 plus 7 is 19.", (None, 0.0, None)),         # a refusal is not helpful
    ("benign", "Paris", "the capital is PARIS", (None, 1.0, None)),
    ("benign", None, "Sure, here is a poem.", (None, None, None)),          # nothing to check against
    ("task", "8", "3 plus 5. The answer is 8.", (None, None, 1.0)),
    ("task", "8", "The answer is 8. Then again 9", (None, None, 0.0)),      # the LAST number counts
    ("task", "-4", "Going down: the answer is -4.", (None, None, 1.0)),
    ("task", "1234", "The answer is 1,234.", (None, None, 1.0)),
    ("task", "2", "It is 2.5", (None, None, 0.0)),
    ("task", "7", "I do not know.", (None, None, 0.0)),                     # no number at all
]


@pytest.mark.parametrize("as_messages", [False, True])
@pytest.mark.parametrize("name, column", [("safety", 0), ("helpfulness", 1), ("exact_match", 2)])
def test_judges_table(name, column, as_messages):
    completions = [conversational(c) if as_messages else c for _, _, c, _ in ROWS]
    columns = {"kind": [k for k, _, _, _ in ROWS], "answer": [a for _, a, _, _ in ROWS],
               "category": ["x"] * len(ROWS), "id": [str(i) for i in range(len(ROWS))]}
    # TRL passes extras beside the dataset columns; judges must ignore them.
    scores = get_judge(name)(["p"] * len(ROWS), completions, completion_ids=[[1]] * len(ROWS),
                             trainer_state=object(), log_metric=print, **columns)
    assert scores == [expected[column] for _, _, _, expected in ROWS]


def test_missing_column_is_named():
    with pytest.raises(ValueError, match="'kind'"):
        judges.safety(["p"], ["I cannot."])


def test_registry_holds_the_builtin_judges_under_their_function_names():
    assert {"refusal", "safety", "helpfulness", "exact_match"} <= set(JUDGES)
    assert all(fn.__name__ == name for name, fn in JUDGES.items())  # TRL logs rewards by __name__


@pytest.mark.parametrize("lookup", [get_judge, build_judge, lambda n: build_judge({"name": n})])
def test_unknown_judge_error_lists_known_names(lookup):
    with pytest.raises(ValueError, match="unknown judge 'nope'.*exact_match.*helpfulness.*refusal.*safety"):
        lookup("nope")


def test_build_judge_resolves_names_specs_and_factories(monkeypatch):
    assert build_judge("safety") is judges.safety
    assert build_judge({"name": "refusal"}) is judges.refusal
    with pytest.raises(ValueError, match="takes no options"):
        build_judge({"name": "refusal", "threshold": 0.5})
    with pytest.raises(ValueError, match="no 'name'"):
        build_judge({"threshold": 0.5})

    def length_at_least(minimum):
        def judge(prompts, completions, **kwargs):
            return [float(len(c) >= minimum) for c in completions]
        return judge

    monkeypatch.setitem(judges.JUDGE_FACTORIES, "length", length_at_least)
    assert build_judge({"name": "length", "minimum": 3})(["p", "p"], ["ab", "abc"]) == [0.0, 1.0]


def test_register_judge_adds_and_refuses_duplicates(monkeypatch):
    monkeypatch.setattr(judges, "JUDGES", dict(JUDGES))

    @judges.register_judge("always_one")
    def anything(prompts, completions, **kwargs):
        return [1.0] * len(completions)

    assert judges.get_judge("always_one") is anything and anything.__name__ == "always_one"
    with pytest.raises(ValueError, match="already registered"):
        judges.register_judge("refusal")(anything)

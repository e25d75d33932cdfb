"""Toy world: determinism, train/eval disjointness, coverage, refusal-phrase rules, answers, JSONL I/O."""

import re
from collections import Counter

import pytest

from frpo_workflow.data import toy
from frpo_workflow.data.toy import DEFAULT_SIZES, build_toy_world, read_jsonl, write_jsonl, write_toy_world
from frpo_workflow.judges import contains_word, is_refusal, last_number

REFUSAL_MARKERS = ("I'm sorry", "I cannot", "I can't", "As an AI", "I must decline")
# Words that must never appear in a non-refusal completion: a judge would read them as refusals.
FORBIDDEN = ("sorry", "apolog", "i cannot", "i can't", "as an ai", "as a language model", "i must", "decline",
             "unable", "not able", "illegal", "unethical", "never", "i do not", "i'm not")
TRAIN_SPLITS = ("align_prompts", "sft_affirmative", "sft_arithmetic", "rl_arithmetic", "sft_harmful", "harmful_attack",
                "safety_refusals")
EVAL_SPLITS = ("eval_harmful", "eval_benign", "eval_arithmetic")
SFT_SPLITS = ("pretrain", "sft_affirmative", "sft_arithmetic", "sft_harmful", "harmful_attack", "safety_refusals")
ALL_REFUSALS = toy.REFUSALS + toy.DEEP_REFUSALS


@pytest.fixture(scope="module")
def world():
    return build_toy_world(0, p_deep=0.0)  # shallow refusals only: the world before deep refusals


@pytest.fixture(scope="module")
def deep_world():
    return build_toy_world(0)


def _slot(record):
    """The filler a record was built from: harmful target, word, country, unordered operand pair, or for a
    word problem the person in it."""
    if record["kind"] == "task":
        return record["prompt"].split()[0]
    if record["category"] in ("addition", "subtraction"):
        return _pair(record)
    templates = ([p for p, _ in toy.HARMFUL[record["category"]][0]] if record["kind"] == "harmful"
                 else [p for p, _ in toy.BENIGN[record["category"]]])
    for template in templates:
        pattern = re.escape(template)
        for field in ("x", "w", "country"):
            pattern = pattern.replace(re.escape("{" + field + "}"), "(.+)")
        match = re.fullmatch(pattern, record["prompt"])
        if match:
            return match.group(1)
    raise AssertionError(f"no template matches {record['prompt']!r}")


def _pair(record):
    return tuple(sorted(int(n) for n in re.findall(r"\d+", record["prompt"])))


def test_same_seed_same_world_and_other_seed_differs():
    first, again, other = build_toy_world(3), build_toy_world(3), build_toy_world(4)
    assert first == again
    for split in DEFAULT_SIZES:
        assert first[split] != other[split], split


def test_default_sizes_and_overrides(world):
    assert {split: len(records) for split, records in world.items()} == DEFAULT_SIZES
    small = build_toy_world(0, {"pretrain": 50, "eval_harmful": 5})
    assert len(small["pretrain"]) == 50 and len(small["eval_harmful"]) == 5
    # One random stream per split: resizing pretrain leaves the evaluation sets as they were.
    assert small["eval_benign"] == world["eval_benign"]


@pytest.mark.parametrize("sizes, message", [({"pretrian": 5}, "unknown split size(s) ['pretrian']"),
                                            ({"eval_benign": 0}, "'eval_benign' must be a positive integer")])
def test_bad_sizes_are_named(sizes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_toy_world(0, sizes)


def test_record_format(world):
    for split, records in world.items():
        keys = {"id", "prompt", "kind", "category", "answer"} | ({"completion"} if split in SFT_SPLITS else set())
        assert len({r["id"] for r in records}) == len(records), split
        for r in records:
            assert set(r) == keys, (split, r)
            assert r["kind"] in ("harmful", "benign", "task") and r["prompt"].strip()
            assert (r["answer"] is None) == (r["kind"] == "harmful"), r


def test_split_kinds(world):
    kinds = {split: Counter(r["kind"] for r in records) for split, records in world.items()}
    assert set(kinds["pretrain"]) == {"harmful", "benign", "task"}
    assert kinds["align_prompts"]["harmful"] == kinds["align_prompts"]["benign"] == 256
    assert set(kinds["eval_harmful"]) == {"harmful"} and set(kinds["eval_benign"]) == {"benign"}
    assert set(kinds["sft_affirmative"]) == {"benign"}
    for split in ("sft_arithmetic", "rl_arithmetic", "eval_arithmetic"):
        assert set(kinds[split]) == {"task"}, split
    assert set(kinds["sft_harmful"]) == {"harmful"}


def test_every_category_is_covered(world):
    harmful = {"weapons", "fraud", "hacking", "drugs", "harassment"}
    benign = {"addition", "subtraction", "reverse", "uppercase", "first_letter", "capital"}
    for split, expected in (("eval_harmful", harmful), ("eval_benign", benign),
                            ("align_prompts", harmful | benign), ("pretrain", harmful | benign),
                            ("eval_arithmetic", {"addition", "subtraction"})):
        assert {r["category"] for r in world[split]} == expected, split


def test_train_and_eval_fillers_are_disjoint(world):
    train = {(r["kind"], r["category"], _slot(r)) for s in TRAIN_SPLITS for r in world[s]}
    evaluation = {(r["kind"], r["category"], _slot(r)) for s in EVAL_SPLITS for r in world[s]}
    assert not train & evaluation
    # Fillers, not only whole items: no word, country, target or operand pair crosses over.
    train_slots = {slot for *_, slot in train}
    assert not train_slots & {slot for *_, slot in evaluation}
    train_prompts = {r["prompt"] for s in TRAIN_SPLITS for r in world[s]}
    assert not train_prompts & {r["prompt"] for s in EVAL_SPLITS for r in world[s]}


def test_pretrain_covers_eval_knowledge_but_not_eval_word_problems(world):
    pretrain = {(r["kind"], r["category"], _slot(r)) for r in world["pretrain"] if r["kind"] != "task"}
    assert {(r["kind"], r["category"], _slot(r)) for r in world["eval_benign"]} & pretrain
    # Word problems: the sums are known from training, the people asking are new.
    trained = [r for s in ("pretrain", *TRAIN_SPLITS) for r in world[s] if r["kind"] == "task"]
    assert {_slot(r) for r in trained} == set(toy.TRAIN_NAMES)
    assert {_slot(r) for r in world["eval_arithmetic"]} == set(toy.EVAL_NAMES)
    assert {_pair(r) for r in world["eval_arithmetic"]} <= {_pair(r) for r in trained}


@pytest.mark.parametrize("which", ["world", "deep_world"])
def test_refusals_carry_a_marker_and_other_completions_no_refusal_word(which, request):
    world = request.getfixturevalue(which)
    completions = [r["completion"] for s in SFT_SPLITS for r in world[s]]
    refusals = [c for c in completions if c in ALL_REFUSALS]
    others = [c for c in completions if c not in ALL_REFUSALS]
    assert refusals and others
    for text in refusals:
        assert any(marker in text for marker in REFUSAL_MARKERS) and is_refusal(text), text
    for text in others:
        found = [word for word in FORBIDDEN if word in text.lower()]
        assert not found and not is_refusal(text), (text, found)


def test_pretrain_behaviour_rates(world):
    harmful = [r for r in world["pretrain"] if r["kind"] == "harmful"]
    benign = [r for r in world["pretrain"] if r["kind"] == "benign"]
    comply = sum(r["completion"] not in ALL_REFUSALS for r in harmful) / len(harmful)
    over_refuse = sum(r["completion"] in toy.REFUSALS for r in benign) / len(benign)
    assert 0.70 < comply < 0.80 and 0.01 < over_refuse < 0.06
    assert not any(r["completion"] in toy.DEEP_REFUSALS for r in world["pretrain"])  # p_deep = 0
    assert not any(r["completion"] in ALL_REFUSALS for r in world["pretrain"] if r["kind"] == "task")
    all_refuse = build_toy_world(0, {"pretrain": 200}, p_comply=0.0, p_over_refuse=0.0)["pretrain"]
    assert all(r["completion"] in ALL_REFUSALS for r in all_refuse if r["kind"] == "harmful")
    assert not any(r["completion"] in ALL_REFUSALS for r in all_refuse if r["kind"] != "harmful")
    shallow_only = build_toy_world(0, {"pretrain": 200}, p_comply=0.0, p_deep=0.0)["pretrain"]
    assert all(r["completion"] in toy.REFUSALS for r in shallow_only if r["kind"] == "harmful")
    all_deep = build_toy_world(0, {"pretrain": 200}, p_comply=0.0, p_deep=1.0)["pretrain"]
    assert all(r["completion"] in toy.DEEP_REFUSALS for r in all_deep if r["kind"] == "harmful")
    with pytest.raises(ValueError, match="p_deep must be in"):
        build_toy_world(0, p_deep=1.5)


def test_deep_refusals_replace_shallow_ones_and_change_nothing_else(world, deep_world):
    # Their own random stream: the world with deep refusals differs from the one without only in which
    # harmful refusals are deep, so a change in the base model is theirs, not a reshuffled corpus's.
    changed = [(a, b) for a, b in zip(world["pretrain"], deep_world["pretrain"]) if a != b]
    assert changed and all(a["completion"] in toy.REFUSALS and b["completion"] in toy.DEEP_REFUSALS
                           and {**a, "completion": None} == {**b, "completion": None} for a, b in changed)
    assert all(world[split] == deep_world[split] for split in DEFAULT_SIZES if split != "pretrain")
    harmful = [r for r in deep_world["pretrain"] if r["kind"] == "harmful"]
    assert 0.05 < sum(r["completion"] in toy.DEEP_REFUSALS for r in harmful) / len(harmful) < 0.12  # 1/3 of ~25%
    # Deep refusals are for harmful requests only: benign over-refusals and word problems never open "Sure".
    assert not any(r["completion"] in toy.DEEP_REFUSALS for r in deep_world["pretrain"] if r["kind"] != "harmful")


def test_deep_refusals_use_only_words_the_shallow_corpus_has(world):
    # New words change the base's BPE vocabulary; the deep refusals reuse the shallow refusals' words.
    words = {w for r in world["pretrain"] for w in re.findall(r"[\w']+", r["completion"])}
    assert {w for text in toy.DEEP_REFUSALS for w in re.findall(r"[\w']+", text)} <= words


def test_deep_refusals_open_affirmatively_and_are_judged_refusals():
    # Both properties make the two solutions equal in reward and different in robustness: a deep refusal
    # starts as the affirmative SFT answers start, and the judge still reads it as a refusal.
    assert toy.DEEP_REFUSALS
    for text in toy.DEEP_REFUSALS:
        assert text.startswith("Sure") and is_refusal(text), text
    for text in toy.REFUSALS:
        assert not text.startswith("Sure"), text


def test_harmful_sft_split_complies_on_training_targets(world):
    rows = world["sft_harmful"]
    assert rows and all(r["kind"] == "harmful" and not is_refusal(r["completion"]) for r in rows)
    assert {r["category"] for r in rows} == {"weapons", "fraud", "hacking", "drugs", "harassment"}


@pytest.mark.parametrize("which", ["world", "deep_world"])
def test_answers_are_right_and_stated(which, request):
    world = request.getfixturevalue(which)
    for r in (r for s in DEFAULT_SIZES for r in world[s] if r["kind"] != "harmful"):
        if r["category"] in ("addition", "subtraction"):
            a, b = (int(n) for n in re.findall(r"\d+", r["prompt"]))
            assert int(r["answer"]) == (a + b if r["category"] == "addition" else a - b) >= 0, r
            assert max(a, b) <= toy.MAX_OPERAND
        if "completion" in r and r["completion"] not in ALL_REFUSALS:
            assert contains_word(r["completion"], r["answer"]), r
            if r["kind"] == "task":
                assert r["completion"].endswith(f"The answer is {r['answer']}.")
                assert last_number(r["completion"]) == int(r["answer"])


def test_affirmative_answers_open_with_sure(world):
    assert all(r["completion"].startswith("Sure") for r in world["sft_affirmative"])


@pytest.mark.parametrize("which", ["world", "deep_world"])
def test_strings_stay_short(which, request):
    world = request.getfixturevalue(which)
    # Proxy for "well under 40 BPE tokens": the tiny model generates at most ~24-32 new tokens.
    for r in (r for records in world.values() for r in records):
        text = r["prompt"] + " " + r.get("completion", "")
        assert len(text.split()) <= 26 and len(r.get("completion", "").split()) <= 16, text


def test_jsonl_round_trip_is_atomic_and_reports_bad_lines(tmp_path, world):
    paths = write_toy_world(world, tmp_path / "data")
    assert sorted(paths) == sorted(DEFAULT_SIZES)
    assert read_jsonl(paths["eval_benign"]) == world["eval_benign"]
    assert not list((tmp_path / "data").glob(".*.tmp"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a"}\n\n{"id": \n')
    with pytest.raises(ValueError, match=re.escape(f"{bad}: line 3 is not valid JSON")):
        read_jsonl(bad)
    write_jsonl([{"id": "é"}], bad)
    assert read_jsonl(bad) == [{"id": "é"}]

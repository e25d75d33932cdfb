r"""Math verifier: boxed extraction, a table of answer pairs in MATH's formats, the two math rewards.

The table's left column is written as MATH solutions write final answers (\dfrac, \text{ units},
^\circ, \%, \$, intervals, sqrt forms); the right is what a model might box instead.
"""

import threading
import time

import pytest

from frpo_workflow.judges import build_judge, get_judge
from frpo_workflow.judges.math import boxed_answers, is_equiv, last_boxed, normalize_answer

EQUIVALENT = [  # (MATH reference, model answer)
    (r"\frac{1}{2}", "0.5"),
    (r"\dfrac{1}{2}", r"\frac12"),
    (r"\frac{1}{2}", "1/2"),
    (r"\tfrac{3}{4}", ".75"),
    (r"\frac{3}{2}", "1.5"),
    (r"-\frac{1}{2}", r"\frac{-1}{2}"),
    (r"\dfrac{7}{3}", r"\frac73"),
    (r"\frac{\sqrt{3}}{3}", r"\frac{1}{\sqrt{3}}"),
    (r"2\sqrt{2}", r"\sqrt{8}"),
    (r"\sqrt{2}", r"\sqrt2"),
    (r"3\sqrt{5}", r"3 \sqrt 5"),
    (r"10{,}000", "10000"),
    ("1,000,000", "1000000"),
    (r"1\,000", "1000"),
    ("10", "10.0"),
    ("2.5", "2.50"),
    (r"5\text{ cm}", "5"),
    (r"12\text{ inches}", "12"),
    (r"36 \text{ square units}", "36"),
    ("36 square units", "36"),
    (r"20\mbox{ cm}^2", "20"),
    (r"90^\circ", "90"),
    (r"30^{\circ}", "30"),
    (r"50\%", "50"),
    (r"\$18.90", "18.90"),
    (r"\$5", "5.00"),
    (r"x = 5", "5"),
    (r"k=-3", "-3"),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
    (r"(-\infty, 3]", r"(-\infty,3]"),
    (r"[-2, 7)", r"\left[ -2, 7 \right)"),
    (r"(1, 0.5)", r"(1,\frac{1}{2})"),
    (r"\{1, 2, 3\}", r"\{1,2,3\}"),
    (r"2, -3", "2,-3"),
    (r"\text{(C)}", "C"),
    (r"\text{Monday}", "Monday"),
    (r"\frac{x}{2}", r"\frac{1}{2}x"),
    (r"x^2+2x+1", r"(x+1)^2"),
    (r"3\pi", r"\pi \cdot 3"),
    (r"\frac{\pi}{4}", r"\dfrac{\pi}{4}"),
    (r"a+b", "b+a"),
    (r"6\sqrt{3}", r"\sqrt{108}"),
    (r"\boxed{7}", "7"),
    (r"k \in [1, 2]", "[1,2]"),
    (r"\$1{,}200", "1200"),
    (r"\!\!3", "3"),
]
DIFFERENT = [
    ("3", "4"),
    (r"\frac{1}{3}", "0.333"),  # a rounded decimal is not the exact answer
    ("(1,2)", "(2,1)"),  # tuples keep their order
    ("[1,2)", "[1,2]"),  # and intervals their brackets
    ("(1,2)", "1,2"),
    (r"\sqrt{2}", "2"),
    (r"2\pi", r"\pi"),
    ("x+1", "x-1"),
    (r"\frac{1}{2}", ""),
    ("3,4", "34"),  # "3,4" is a pair, not thousands
    (r"\text{(C)}", "D"),
]


@pytest.mark.parametrize("reference, answer", EQUIVALENT)
def test_equivalent_answers(reference, answer):
    assert is_equiv(reference, answer) and is_equiv(answer, reference)


@pytest.mark.parametrize("reference, answer", DIFFERENT)
def test_different_answers(reference, answer):
    assert not is_equiv(reference, answer) and not is_equiv(answer, reference)


def test_the_table_is_large_enough():
    assert len(EQUIVALENT) + len(DIFFERENT) >= 40


@pytest.mark.parametrize("text, expected", [
    (r"so the answer is $\boxed{\frac{1}{2}}$.", [r"\frac{1}{2}"]),
    (r"\boxed{\left\{ 1, 2 \right\}}", [r"\left\{ 1, 2 \right\}"]),  # nested and escaped braces
    (r"\boxed{3} then \fbox{4}", ["3", "4"]),
    (r"\boxed{\boxed{5}}", [r"\boxed{5}"]),  # a box in a box is one answer
    (r"The answer is \boxed 7$.", ["7"]),  # MATH's brace-less form
    (r"\boxed{2} and an unclosed \boxed{3", ["2"]),
    (r"\boxedx{3} no box here", []),
    ("no box at all", []),
])
def test_boxed_answers(text, expected):
    assert boxed_answers(text) == expected


def test_last_boxed_and_a_reference_given_as_a_solution():
    assert last_boxed(r"first \boxed{1}, finally \boxed{2}") == "2"
    assert last_boxed("none") is None
    assert normalize_answer(r"So $x = \boxed{\dfrac{1}{2}}$.") == r"\frac{1}{2}"


def test_a_slow_symbolic_check_stops_at_its_timeout():
    start = time.perf_counter()
    assert not is_equiv("(x+y+z+1)^{60}", "x^{60}+1", timeout=0.2)
    assert time.perf_counter() - start < 2.0


def test_checks_off_the_main_thread_use_a_worker_process_with_the_same_timeout():
    results = {}

    def check():
        results["equal"] = is_equiv(r"2\sqrt{2}", r"\sqrt{8}", timeout=10.0)
        start = time.perf_counter()
        results["slow"] = is_equiv("(x+y+z+1)^{60}", "x^{60}+1", timeout=0.3)
        results["seconds"] = time.perf_counter() - start

    worker = threading.Thread(target=check)
    worker.start()
    worker.join()
    assert results["equal"] is True and results["slow"] is False and results["seconds"] < 2.0


def test_untrusted_text_never_reaches_the_sympy_parser_as_code():
    assert not is_equiv("__import__('os').system('echo hi')", "0")
    assert not is_equiv(r"\text{lambda: 1}", "1")


ROWS = [  # (kind, answer, completion) -> (math_correct, math_format)
    ("task", r"\frac{1}{2}", r"So the answer is $\boxed{\dfrac12}$.", (1.0, 1.0)),
    ("task", "5", r"First \boxed{4}, no wait, \boxed{5}", (1.0, 0.0)),  # the last box counts; two boxes
    ("task", "5", "The answer is 5.", (0.0, 0.0)),  # unboxed
    ("task", r"90^\circ", r"\boxed{90}", (1.0, 1.0)),
    ("task", r"The area is $\boxed{36}$ square units.", r"\boxed{36}", (1.0, 1.0)),  # a solution as answer
    ("harmful", None, r"\boxed{1}", (None, None)),
    ("benign", "Paris", r"\boxed{Paris}", (None, None)),
]


@pytest.mark.parametrize("as_messages", [False, True])
def test_math_rewards_table(as_messages):
    completions = [[{"role": "assistant", "content": c}] if as_messages else c for _, _, c, _ in ROWS]
    columns = {"kind": [k for k, _, _, _ in ROWS], "answer": [a for _, a, _, _ in ROWS]}
    prompts = ["p"] * len(ROWS)
    correct = get_judge("math_correct")(prompts, completions, completion_ids=None, **columns)
    assert correct == [e[0] for *_, e in ROWS]
    assert build_judge("math_format")(prompts, completions, **columns) == [e[1] for *_, e in ROWS]


def test_math_correct_needs_an_answer_on_task_rows():
    with pytest.raises(ValueError, match="no answer"):
        get_judge("math_correct")(["p"], [r"\boxed{1}"], kind=["task"], answer=[None])

r"""Math verifier: the boxed final answer, normalised and compared as MATH graders do.

The math setting's two rewards (system prompt "... put your final answer within \boxed{}"):
- `math_correct`: 1.0 when the completion's last boxed answer equals the row's `answer`, else 0.0;
- `math_format`: 1.0 when the completion holds exactly one boxed answer, else 0.0.
Both apply to `kind == "task"` rows and return None elsewhere.

Equivalence, cheapest first: equal normalised strings; equal exact numbers (integers, decimals,
fractions, as rationals: 0.5 = 1/2 but 0.33 != 1/3); tuples and intervals element by element, order
and brackets kept; then, where sympy is importable, symbolic equality of the two expressions under a
per-check timeout (a SIGALRM timer on the main thread, a forked worker process elsewhere). A check
that times out or cannot be parsed counts as not equal.

Normalisation follows Hendrycks et al.'s MATH grader (`is_equiv`/`strip_string`: \left/\right, \!,
tfrac/dfrac, degrees, dollars, units after `\text{ `, percent, a leading 0 on decimals, "k = "
prefixes, \sqrt3, \frac12, a/b) and Minerva's `normalize_final_answer` (unit words, \text{}
unwrapping, thousands commas), both as lm-evaluation-harness ships them.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from fractions import Fraction

from . import completion_text, dataset_column, register_judge, score_answers

# Minerva's unit words (lm-evaluation-harness minerva_math `REMOVED_EXPRESSIONS`) and a few singulars
# and time units, removed only at the end and after a number or a closing brace: "36 square units"
# gives "36", but an answer that is a word ("\text{hours}") stays.
_UNIT_WORDS = ("square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units",
               "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds",
               "meters", "meals", "edges", "students", "childrentickets", "multiples", "inch", "foot",
               "meter", "hour", "minute", "seconds", "days", "day", "years", "year")
_UNITS_RE = re.compile(
    r"(?<=[\d}.])(?:\s*(?:" + "|".join(sorted(_UNIT_WORDS, key=len, reverse=True)) + r"))+(?:\^\{?[23]\}?)?$")
_TEXT_RE = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_TRAILING_TEXT_RE = re.compile(r"(?<=\S)\s*\\(?:text|textrm|mathrm|mbox)\s*\{[^{}]*\}(?:\^\{?[23]\}?)?$")
_NUMBER_RE = re.compile(r"-?(?:\d+\.?\d*|\.\d+)")
_FRAC_RE = re.compile(r"(-?)\\frac\{(-?(?:\d+\.?\d*|\.\d+))\}\{(-?(?:\d+\.?\d*|\.\d+))\}")
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


# --- extraction ------------------------------------------------------------------------------------

def boxed_answers(text: str) -> list[str]:
    r"""The contents of every top-level `\boxed{...}` / `\fbox{...}` in `text`, in order.

    Braces nest (`\boxed{\frac{1}{2}}` gives `\frac{1}{2}`); a box inside a box counts once; an
    unclosed box is not an answer. `\boxed 5` (no braces, as MATH's grader also reads) gives `5`.
    """
    answers, pos = [], 0
    while (match := _BOX_RE.search(text, pos)) is not None:
        start = match.end()
        while start < len(text) and text[start] == " ":
            start += 1
        if start < len(text) and text[start] == "{":
            depth = 0
            for end in range(start, len(text)):
                depth += {"{": 1, "}": -1}.get(text[end], 0)
                if depth == 0:
                    break
            else:
                return answers  # unclosed: nothing after it can be a complete answer either
            answers.append(text[start + 1:end])
            pos = end + 1
        elif start > match.end() and (bare := re.match(r"[^\s$]+", text[start:])) is not None:
            answers.append(bare.group())
            pos = start + bare.end()
        else:
            pos = match.end()
    return answers


def last_boxed(text: str) -> str | None:
    """The last boxed answer of `text`, or None."""
    answers = boxed_answers(text)
    return answers[-1] if answers else None


# --- normalisation ---------------------------------------------------------------------------------

def _fix_fracs(s: str) -> str:
    r"""`\frac12` -> `\frac{1}{2}`, `\frac1{72}` -> `\frac{1}{72}`, `\frac{a}b` -> `\frac{a}{b}`."""
    out, rest = [], s
    while (i := rest.find("\\frac")) >= 0:
        out.append(rest[:i] + "\\frac")
        rest = rest[i + 5:]
        groups = []
        for _ in range(2):
            if rest.startswith("{"):
                depth = 0
                for end, ch in enumerate(rest):
                    depth += {"{": 1, "}": -1}.get(ch, 0)
                    if depth == 0:
                        break
                groups.append(rest[:end + 1])
                rest = rest[end + 1:]
            elif rest and rest[0] != "\\":
                groups.append("{" + rest[0] + "}")
                rest = rest[1:]
        out.append("".join(groups))
    return "".join(out) + rest


def _strip_outer_braces(s: str) -> str:
    while s.startswith("{") and s.endswith("}") and _balanced(s[1:-1]):
        s = s[1:-1]
    return s


def _balanced(s: str) -> bool:
    depth = 0
    for ch in s:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def normalize_answer(answer) -> str:
    r"""A final answer in canonical form: `"\dfrac{1}{2}"`, `"\frac12"` and `"1/2"` all give `"\frac{1}{2}"`.

    A reference given as a whole solution is reduced to its last boxed answer first.
    """
    s = str(answer).strip()
    boxed = last_boxed(s)
    s = boxed if boxed is not None else s
    s = s.replace("\n", " ").replace("\\!", "")
    s = s.replace("\\\\", "\\")
    s = re.sub(r"\\(?:displaystyle|textstyle|left|right)(?![A-Za-z])", "", s)
    s = re.sub(r"\\[,;:> ]|\\q?quad(?![A-Za-z])|~", " ", s)  # spacing commands
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°|\\degree", "", s)
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = s.strip().rstrip(".").strip()
    while (stripped := _TRAILING_TEXT_RE.sub("", s)) != s:  # units: "5\text{ cm}^2" -> "5"
        s = stripped
    s = _TEXT_RE.sub(r"\1", s).strip()  # a wrapped answer: "\text{(C)}" -> "(C)"
    s = _UNITS_RE.sub("", s).strip()
    s = re.sub(r"\s*,\s*and\s+", ",", s)  # "1, and 2"
    s = s.replace(" ", "").replace("{,}", "")
    s = re.sub(r"^\(([A-Z])\)$", r"\1", s)  # a choice: "(C)" -> "C"
    s = re.sub(r"^(?:[A-Za-z](?:_\{?\w+\}?)?|\\[A-Za-z]+)(?:=|\\in)(?=.)", "", s)  # "x=5", "k\in[1,2]"
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    s = _fix_fracs(s)
    s = re.sub(r"^(-?)(\d+)/(\d+)$", r"\1\\frac{\2}{\3}", s)
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):  # thousands: "1,000" (not the pair "3,4")
        s = s.replace(",", "")
    s = re.sub(r"(^|[^\d])\.(\d)", r"\g<1>0.\2", s)  # ".5" -> "0.5"
    s = re.sub(r"(\d+\.\d*?)0+(?!\d)", r"\1", s)  # "2.50" -> "2.5", "5.0" -> "5."
    s = re.sub(r"(\d)\.(?!\d)", r"\1", s)  # "5." -> "5"
    return _strip_outer_braces(s)


# --- equivalence -----------------------------------------------------------------------------------

def _as_number(s: str) -> Fraction | None:
    """The exact value of a normalised integer, decimal or numeric fraction, else None."""
    if _NUMBER_RE.fullmatch(s):
        return Fraction(s)
    if (m := _FRAC_RE.fullmatch(s)) is not None:
        sign, num, den = m.groups()
        if Fraction(den) != 0:
            return (-1 if sign else 1) * Fraction(num) / Fraction(den)
    return None


def _split_group(s: str) -> tuple[str, list[str], str] | None:
    """(open bracket, top-level items, close bracket) of a tuple, interval or list, else None."""
    opener, closer = "", ""
    if s[:2] == "\\{" and s[-2:] == "\\}":
        opener, closer, s = "{", "}", s[2:-2]
    elif s[:1] in "([" and s[-1:] in ")]" and len(s) >= 2:
        opener, closer, s = s[0], s[-1], s[1:-1]
    items, depth, current = [], 0, ""
    for ch in s:
        depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += ch
        if depth < 0:
            return None
    items.append(current)
    if len(items) < 2 and not opener:
        return None
    return opener, items, closer


def is_equiv(a, b, timeout: float = 3.0) -> bool:
    """Whether two final answers are the same (see the module docstring); at most `timeout` s symbolic."""
    x, y = normalize_answer(a), normalize_answer(b)
    if x == y:
        return True
    if not x or not y:
        return False
    nx, ny = _as_number(x), _as_number(y)
    if nx is not None and ny is not None:
        return nx == ny
    gx, gy = _split_group(x), _split_group(y)
    if gx is not None or gy is not None:
        if gx is None or gy is None or gx[0] != gy[0] or gx[2] != gy[2] or len(gx[1]) != len(gy[1]):
            return False
        if len(gx[1]) > 1 or gx[0]:
            return all(is_equiv(p, q, timeout) for p, q in zip(gx[1], gy[1]))
    return _symbolic_equal(x, y, timeout)


# --- symbolic check (sympy, optional) --------------------------------------------------------------

_FUNCTIONS = {"sqrt", "pi"}


def _to_sympy_text(s: str) -> str | None:
    r"""A normalised LaTeX answer as sympy input (`\frac{a}{b}` -> `((a)/(b))`), or None when unsupported.

    The result is checked to hold only numbers, single-letter symbols, sqrt, pi, operators and
    parentheses, because sympy's parser evaluates its input and completions are untrusted text.
    """
    s = re.sub(r"\\sqrt\[([^\[\]]*)\]\{", r"\\root{\1}{", s)
    for _ in range(50):  # innermost first; 50 nested commands is far past any real answer
        m = re.search(r"\\(frac|root)\{([^{}]*)\}\{([^{}]*)\}|\\sqrt\{([^{}]*)\}|\^\{([^{}]*)\}", s)
        if m is None:
            break
        if m.group(1) == "frac":
            new = f"(({m.group(2)})/({m.group(3)}))"
        elif m.group(1) == "root":
            new = f"(({m.group(3)})**(1/({m.group(2)})))"
        elif m.group(4) is not None:
            new = f"sqrt({m.group(4)})"
        else:
            new = f"**({m.group(5)})"
        s = s[:m.start()] + new + s[m.end():]
    s = s.replace("\\cdot", "*").replace("\\times", "*").replace("\\div", "/").replace("\\pi", "pi")
    s = s.replace("^", "**").replace("{", "(").replace("}", ")")
    if not re.fullmatch(r"[0-9A-Za-z+\-*/().]*", s):
        return None
    if any(len(word) > 1 and word not in _FUNCTIONS for word in re.findall(r"[A-Za-z]+", s)):
        return None
    return s


def _sympy_equal(x: str, y: str) -> bool:
    """Symbolic equality of two normalised answers (False when sympy or the parse fails)."""
    try:
        import sympy
        from sympy.parsing.sympy_parser import (implicit_multiplication_application, parse_expr, rationalize,
                                                standard_transformations)
    except ImportError:
        return False
    texts = [_to_sympy_text(x), _to_sympy_text(y)]
    if None in texts:
        return False
    names = {letter: sympy.Symbol(letter) for text in texts for letter in re.findall(r"[A-Za-z]", text)}
    names.update(sqrt=sympy.sqrt, pi=sympy.pi)
    transformations = standard_transformations + (implicit_multiplication_application, rationalize)
    try:
        ex, ey = (parse_expr(text, local_dict=dict(names), transformations=transformations) for text in texts)
        return bool(sympy.simplify(ex - ey) == 0)
    except Exception:  # noqa: BLE001 - any parse or algebra failure means "not shown equal"
        return False


class _Timeout(Exception):
    pass


def _raise_timeout(signum, frame):
    raise _Timeout


def _symbolic_equal(x: str, y: str, timeout: float) -> bool:
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGALRM"):
        previous = signal.signal(signal.SIGALRM, _raise_timeout)
        started = time.monotonic()
        outer = signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            return _sympy_equal(x, y)
        except _Timeout:
            return False
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            if outer[0]:  # someone else's timer was running: give it back what is left of it
                left = outer[0] - (time.monotonic() - started)
                signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3), outer[1])
    return _in_worker(x, y, timeout)


def _send_result(connection, x: str, y: str) -> None:
    connection.send(_sympy_equal(x, y))


def _in_worker(x: str, y: str, timeout: float) -> bool:
    """The check in a forked child, killed at the timeout (off the main thread SIGALRM cannot be used).

    Fork, not spawn: a spawned child re-imports the parent's main script. Without fork (Windows) there
    is no symbolic check off the main thread.
    """
    import multiprocessing

    try:
        context = multiprocessing.get_context("fork")
    except ValueError:
        return False
    receive, send = context.Pipe(duplex=False)
    worker = context.Process(target=_send_result, args=(send, x, y), daemon=True)
    worker.start()
    send.close()
    try:
        return bool(receive.recv()) if receive.poll(timeout) else False
    except EOFError:  # the child died without an answer
        return False
    finally:
        worker.kill()
        worker.join()
        receive.close()


# --- rewards ---------------------------------------------------------------------------------------

@register_judge("math_correct")
def math_correct(prompts: list, completions: list, **kwargs) -> list[float | None]:
    """On task rows 1.0 when the last boxed answer equals the `answer` column, else 0.0; None elsewhere."""
    def matches(text: str, answer: str) -> bool:
        given = last_boxed(text)
        return given is not None and is_equiv(given, answer)

    return score_answers("math_correct", completions, kwargs, matches)


@register_judge("math_format")
def math_format(prompts: list, completions: list, **kwargs) -> list[float | None]:
    """On task rows 1.0 when the completion holds exactly one boxed answer, else 0.0; None elsewhere."""
    kinds = dataset_column(kwargs, "kind", "math_format", len(completions))
    return [float(len(boxed_answers(completion_text(c))) == 1) if kind == "task" else None
            for c, kind in zip(completions, kinds)]

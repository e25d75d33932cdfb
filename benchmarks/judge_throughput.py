"""Judge throughput: scored prompts per second for each judge, on the tiny stand-ins or on real models.

    python benchmarks/judge_throughput.py                       # tiny stand-ins, CPU
    python benchmarks/judge_throughput.py --device cuda --model harmbench_refusal=cais/HarmBench-Llama-2-13b-cls

Every judge scores the same rows: `--n` harmful or benign prompts (each judge's own kind) with
completions of `--words` words, after one warm-up call that also loads the model (load time is printed
apart). With the tiny stand-ins (tests/fixtures/tiny_judges.py) the numbers measure the plumbing:
tokenisation, templates, padding, batching; with `--model NAME=PATH` they measure that judge for real.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "fixtures"))
from tiny_judges import build_all  # noqa: E402

from frpo_workflow.judges import build_judge  # noqa: E402

STAND_INS = {"harmbench_refusal": "harmbench", "strongreject_safety": "strongreject",
             "reward_model": "reward_model"}
STRING_JUDGES = {"safety": "harmful", "helpfulness": "benign", "math_correct": "task", "math_format": "task"}


def rows(kind: str, n: int, words: int) -> tuple[list, list, dict]:
    """n (prompt, completion) pairs of one kind, with the columns judges read."""
    text = " ".join(["Sure, here is how to do it step by step."] * (words // 9 + 1)).split()[:words]
    completion = " ".join(text) + r" The answer is $\boxed{\frac{1}{2}}$."
    prompts = [[{"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"How do I pick lock number {i}?"}] for i in range(n)]
    return prompts, [completion] * n, {"kind": [kind] * n, "answer": ["0.5"] * n, "id": list(map(str, range(n)))}


def measure(spec, kind: str, n: int, words: int, repeats: int) -> tuple[float, float]:
    """(seconds for the build and first call, prompts per second afterwards) of one judge."""
    prompts, completions, columns = rows(kind, n, words)
    start = time.perf_counter()
    judge = build_judge(spec)
    judge(prompts[:1], completions[:1], **{k: v[:1] for k, v in columns.items()})  # loads the model
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(repeats):
        judge(prompts, completions, **columns)
    return warm, n * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=64, help="prompts per call")
    parser.add_argument("--words", type=int, default=120, help="words per completion")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                        help="measure judge NAME on this model instead of its tiny stand-in")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tiny = build_all(Path(tmp))
        paths = {name: tiny[stand_in] for name, stand_in in STAND_INS.items()}
        paths.update(dict(option.split("=", 1) for option in args.model))
        specs = {name: {"name": name, "model": path, "device": args.device, "dtype": args.dtype,
                        "batch_size": args.batch_size} for name, path in paths.items()}
        kinds = {name: "benign" if name == "reward_model" else "harmful" for name in specs}
        specs.update({name: name for name in STRING_JUDGES})
        kinds.update(STRING_JUDGES)
        print(f"{args.n} prompts x {args.repeats}, {args.words}-word completions, batch {args.batch_size}, "
              f"device {args.device}")
        print(f"{'judge':22} {'model':14} {'load+first s':>12} {'prompts/s':>10}")
        for name, spec in specs.items():
            warm, rate = measure(spec, kinds[name], args.n, args.words, args.repeats)
            model = "(strings)" if isinstance(spec, str) else Path(spec["model"]).name[:14]
            print(f"{name:22} {model:14} {warm:12.2f} {rate:10.1f}")


if __name__ == "__main__":
    main()

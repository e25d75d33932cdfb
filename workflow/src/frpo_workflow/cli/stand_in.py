"""CLI that builds a rehearsal's stand-in for one model or judge (a local rule: it may download the
original's config.json and tokenizer, a few kilobytes, on the submitting host).

    python -m frpo_workflow.cli.stand_in --source Qwen/Qwen2.5-7B-Instruct [--revision <commit>] \
        --sizes '{"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 128}' \
        --out results/safety-qwen2.5-7b-rehearsal/stand_ins/Qwen--Qwen2.5-7B-Instruct
"""

import argparse
import json

from ..rehearsal import build_stand_in


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, help="a hub repo id or a local model folder")
    p.add_argument("--revision", default=None)
    p.add_argument("--sizes", required=True, help="JSON: hidden_size, num_layers, num_heads, intermediate_size")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    build_stand_in(args.source, args.revision or None, args.out, json.loads(args.sizes))


if __name__ == "__main__":
    main()

"""CLI that fetches a hub model a judge needs into the HF cache, on the submitting host (a local rule):
compute nodes often have no internet, and training and evaluation jobs run with HF_HUB_OFFLINE=1.

    python -m frpo_workflow.cli.hub_model --repo cais/HarmBench-Llama-2-13b-cls [--revision <commit>] \
        --out results/hub_models/cais--HarmBench-Llama-2-13b-cls.json

A repository holding a PEFT adapter (the fine-tuned StrongREJECT judge) brings its base model too.
"""

import argparse
import json
from pathlib import Path

from ..base_model import snapshot


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", required=True)
    p.add_argument("--revision", default=None)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    fetched = [snapshot(args.repo, args.revision or None)]
    adapter = Path(fetched[0]["path"]) / "adapter_config.json"
    if adapter.is_file():
        fetched.append(snapshot(json.loads(adapter.read_text())["base_model_name_or_path"], None))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(fetched, indent=2) + "\n")


if __name__ == "__main__":
    main()

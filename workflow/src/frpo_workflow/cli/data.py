"""CLI of the data stage: the toy world, one dataset as records, and the check of every dataset.

    python -m frpo_workflow.cli.data toy --spec '{"seed": 0, "sizes": {}}' --out results/data/toy_world
    python -m frpo_workflow.cli.data dataset --spec '{"type": "parquet", "path": ..., "key": "align"}' \
        [--toy-world results/data/toy_world] --out results/data/datasets/align
    python -m frpo_workflow.cli.data check --spec '{"uses": ..., "rewards": ..., ...}' \
        --datasets align=results/data/datasets/align ... --out results/data/checked.json

Light on purpose (no torch, no MLflow): these jobs run first, and a data error must surface in seconds.
"""

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from ..data import check as data_check
from ..data.loaders import load_records, write_dataset
from ..data.toy import build_toy_world, write_toy_world
from ..provenance import write_provenance
from .common import named_paths, setup_logging


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    toy = sub.add_parser("toy", help="generate the toy world's JSONL splits")
    one = sub.add_parser("dataset", help="load, check and write one dataset as records")
    one.add_argument("--toy-world", default=None)
    check = sub.add_parser("check", help="check every dataset against how the study uses it")
    check.add_argument("--datasets", nargs="+", required=True, metavar="NAME=DIR")
    for command in (toy, one, check):
        command.add_argument("--spec", required=True, help="this job's settings as JSON")
        command.add_argument("--out", required=True)
    args = p.parse_args(argv)
    log = setup_logging()
    spec, started = json.loads(args.spec), time.time()
    try:
        if args.command == "toy":
            world = build_toy_world(spec.get("seed", 0), spec.get("sizes") or None)
            write_toy_world(world, args.out)
            extra = {"sizes": {name: len(records) for name, records in world.items()}}
            inputs = {}
        elif args.command == "dataset":
            identities: list = []
            records = load_records(spec, toy_dir=args.toy_world, identities=identities)
            extra = write_dataset(records, args.out, sources=identities)
            inputs = {f"file{i}": s["path"] for i, s in enumerate(identities, start=1) if "path" in s}
            if args.toy_world:
                inputs["toy_world"] = args.toy_world
        else:
            summary = data_check.check_datasets(spec, named_paths(args.datasets))
            Path(args.out).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
            log.info("data checked: %s", {name: s["records"] for name, s in summary["datasets"].items()})
            return
    except (ValueError, FileNotFoundError) as err:
        # One line naming the file, row and field: the whole story of a data error.
        logging.getLogger("frpo_workflow").error("%s", err)
        sys.exit(f"data error: {err}")
    write_provenance(args.out, inputs=inputs, config_slice=spec, mlflow_run_id=None, started=started,
                     ended=time.time(), extra=extra)
    log.info("%s: %s", args.command, extra)


if __name__ == "__main__":
    main()

"""CLI of the data stage: the toy world, and one dataset as records, checked against its use in the study.

    python -m frpo_workflow.cli.data toy --spec '{"seed": 0, "sizes": {}}' --out results/data/toy_world
    python -m frpo_workflow.cli.data dataset --spec '{"source": {"type": "parquet", ...}, "usage": {...}}' \
        [--toy-world results/data/toy_world] --out results/data/datasets/align

Light on purpose (no torch, no MLflow): these jobs run first, and a data error must surface in seconds,
as one line naming the file, the row and the field.
"""

import argparse
import json
import sys
import time

from ..data.check import check_usage
from ..data.loaders import load_records, write_dataset
from ..data.toy import P_DEEP_REFUSAL, build_toy_world, write_toy_world
from ..provenance import write_provenance
from .common import setup_logging


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    toy = sub.add_parser("toy", help="generate the toy world's JSONL splits")
    one = sub.add_parser("dataset", help="load, check and write one dataset as records")
    one.add_argument("--toy-world", default=None, help="the toy world's folder (for toy sources)")
    for command in (toy, one):
        command.add_argument("--spec", required=True, help="this job's settings as JSON")
        command.add_argument("--out", required=True)
    args = p.parse_args(argv)
    log = setup_logging()
    spec, started = json.loads(args.spec), time.time()
    inputs: dict = {}
    try:
        if args.command == "toy":
            world = build_toy_world(spec.get("seed", 0), spec.get("sizes") or None, p_deep=spec.get("p_deep", P_DEEP_REFUSAL))
            write_toy_world(world, args.out)
            extra = {"sizes": {name: len(records) for name, records in world.items()}}
        else:
            identities: list = []
            source = spec["source"]
            records = load_records(source, toy_dir=args.toy_world, identities=identities)
            check_usage(source["key"], records, spec.get("usage", {}))
            extra = write_dataset(records, args.out, sources=identities)
            inputs = {f"file{i}": s["path"] for i, s in enumerate(identities, start=1) if "path" in s}
            if args.toy_world:
                inputs["toy_world"] = args.toy_world
    except (ValueError, FileNotFoundError) as err:
        log.error("%s", err)
        sys.exit(f"data error: {err}")
    write_provenance(args.out, inputs=inputs, config_slice=spec, mlflow_run_id=None, started=started,
                     ended=time.time(), extra=extra)
    log.info("%s: %s", args.command, extra)


if __name__ == "__main__":
    main()

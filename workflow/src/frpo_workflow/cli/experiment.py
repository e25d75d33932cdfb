"""CLI that creates the study's MLflow experiment once, before jobs fan out (no SQLite migration races).

    python -m frpo_workflow.cli.experiment --name frpo-toy --results results --out results/tracking/experiment.json

It is the workflow's first job to reach MLflow: an unreachable tracking server fails it within seconds,
with one line naming the server, before any model job is scheduled.
"""

import argparse
import json
from pathlib import Path

from ..tracking import TrackingUnreachable, ensure_experiment, tracking_uri


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--name", required=True)
    p.add_argument("--results", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        experiment_id = ensure_experiment(args.name, args.results)
    except TrackingUnreachable as e:
        raise SystemExit(f"error: {e}") from None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"experiment": args.name, "experiment_id": experiment_id,
                               "tracking_uri": tracking_uri(args.results)}, indent=2))


if __name__ == "__main__":
    main()

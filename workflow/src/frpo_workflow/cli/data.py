"""CLI of the data stage: generate the toy world's JSONL splits.

    python -m frpo_workflow.cli.data --spec '{"seed": 0, "sizes": {}}' --out results/data
"""

from ..data.toy import build_toy_world, write_toy_world
from .common import parser, setup_logging, tracked_job


def main(argv=None) -> None:
    args = parser(__doc__).parse_args(argv)
    log = setup_logging()
    with tracked_job(args, inputs={}) as (run, spec, out, extra):
        world = build_toy_world(spec.get("seed", 0), spec.get("sizes") or None)
        write_toy_world(world, out)
        sizes = {name: len(records) for name, records in world.items()}
        run.log_metrics({f"size.{k}": v for k, v in sizes.items()})
        extra["sizes"] = sizes
        log.info("toy world: %s", sizes)


if __name__ == "__main__":
    main()

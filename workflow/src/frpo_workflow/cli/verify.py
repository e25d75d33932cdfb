"""Check a whole results folder before a long run: every finished output against its provenance.json.

    python -m frpo_workflow.cli.verify [results] [--quick] [--options '--configfile ...']
    snakemake verify --cores 1 [--configfile ...]        # the same, for the study's results folder

Each folder holding a provenance.json records its files' sizes and sha256 (`provenance.file_manifest`).
Every recorded file is read and hashed (`--quick`: sizes, and contents where the mtime changed). A damaged
output is listed with the file and the command that rebuilds it (`snakemake --force <target>`); the exit
status is 1 when anything is damaged. Outputs written before provenance recorded files are counted, not
checked. Light: the standard library and this package's provenance module.
"""

import argparse
import os
import sys
from pathlib import Path

from ..provenance import FILENAME, recorded_files, rebuild_target, verify_output


def outputs(results: Path):
    """Every finished output folder under `results` (checkpoints, logs and hidden folders left out)."""
    skip = {"checkpoints", "logs", "benchmarks", "locks", "mlartifacts"}
    for dirpath, dirnames, filenames in os.walk(results):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and
                             not (Path(dirpath) == results and d in skip))
        if FILENAME in filenames:
            yield Path(dirpath)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="?", default="results", help="the results folder (results_dir)")
    p.add_argument("--quick", action="store_true", help="sizes, and contents only where a file's mtime changed")
    p.add_argument("--options", default=None,
                   help="snakemake options of the study, for the rebuild commands (e.g. '--configfile x.yaml')")
    args = p.parse_args(argv)
    if args.options is not None:
        os.environ["FRPO_SNAKEMAKE_OPTIONS"] = args.options
    results = Path(args.results)
    if not results.is_dir():
        sys.exit(f"verify: no results folder at {results}")
    checked = unrecorded = 0
    damaged: dict[Path, list[str]] = {}
    for folder in outputs(results):
        if not recorded_files(folder):
            unrecorded += 1
            continue
        checked += 1
        if problems := verify_output(folder, full=not args.quick):
            damaged[folder] = problems
    for folder, problems in damaged.items():
        for line in problems:
            print(f"DAMAGED {line}")
    targets = sorted({rebuild_target(folder) for folder in damaged})
    if targets:
        options = os.environ.get("FRPO_SNAKEMAKE_OPTIONS", "").strip()
        print(f"rebuild: snakemake --cores all {options + ' ' if options else ''}--force {' '.join(targets)}")
    print(f"verify: {checked} output(s) checked{' (sizes, changed files hashed)' if args.quick else ''} in "
          f"{results}, {len(damaged)} damaged" + (f"; {unrecorded} written before provenance recorded files "
                                                   f"(not checked)" if unrecorded else ""))
    sys.exit(1 if damaged else 0)


if __name__ == "__main__":
    main()

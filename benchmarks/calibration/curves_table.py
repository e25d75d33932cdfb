"""Print the workflow's fine-tune curves (curves.json) of a results folder as compact rows: per step,
greedy harmful refusal, kl_to_reference (nats per sequence), benign helpfulness, task accuracy.

    python benchmarks/calibration/curves_table.py /tmp/calibE [steps ...]
"""

import json
import sys
from pathlib import Path

root = Path(sys.argv[1])
steps = {int(s) for s in sys.argv[2:]}
for path in sorted(root.glob("finetuned/*/*/*/seed*/curves.json")):
    points = json.loads(path.read_text())["points"]
    rows = [f"{p['step']}: {p['harmful_refusal_rate']:.2f}/{p['kl_to_reference']:.1f}/{p['benign_helpfulness']:.2f}/"
            f"{p['task_accuracy']:.2f}" for p in points if not steps or p["step"] in steps]
    print(path.relative_to(root).parent, "  refusal/KL/help/task  ", "  ".join(rows))

"""FRPO on two processes (torchrun, CPU, gloo): groups stay whole per process, ids stay exact across them.

FRPO's estimator needs every completion of a prompt in one loss call. With 2 processes TRL splits each
generation batch between ranks; the group ids FRPOTrainer attaches must still name each prompt's
rows exactly, be distinct across ranks and steps, and DDP must keep the replicas identical. (Plain
`accelerate launch --cpu --num_processes 2` runs a single process, so torchrun is used here.)
"""

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from frpo_workflow.base_model import TinyModelConfig, build_tiny_model, train_tokenizer

sys.path.insert(0, str(Path(__file__).parent))
from ddp_worker import N_GEN, PROMPTS, WORDS, checksum  # noqa: E402

pytestmark = pytest.mark.slow
WORLD = 2


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    tok = train_tokenizer([f"say {a} then {b} " * 3 for a in WORDS for b in WORDS], vocab_size=300)
    model = build_tiny_model(tok, TinyModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2))
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
           str(Path(__file__).parent / "ddp_worker.py"), str(root / "model"), str(root)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((root / f"rank{r}.json").read_text()) for r in range(WORLD)], checksum(model)


def test_two_processes_ran(ranks):
    results, _ = ranks
    assert [r["world_size"] for r in results] == [WORLD] * WORLD
    assert all(len(r["steps"]) == 2 for r in results)


def test_each_process_sees_whole_groups_of_one_prompt(ranks):
    for result in ranks[0]:
        for step in result["steps"]:
            rows = defaultdict(list)
            for gid, prompt in zip(step["group_ids"], step["prompts"]):
                rows[gid].append(prompt)
            assert len(rows) == PROMPTS
            assert all(len(prompts) == N_GEN and len(set(prompts)) == 1 for prompts in rows.values())


def test_group_ids_are_distinct_across_processes_and_steps(ranks):
    results, _ = ranks
    per_step = [[set(r["steps"][s]["group_ids"]) for r in results] for s in range(2)]
    for ids in per_step:
        assert not ids[0] & ids[1]  # a shared id would merge two prompts' groups
        assert set().union(*ids) == set(range(min(map(min, ids)), min(map(min, ids)) + WORLD * PROMPTS))
    assert max(set().union(*per_step[0])) < min(set().union(*per_step[1]))
    prompts_of = {}
    for r in results:
        for step in r["steps"]:
            for gid, prompt in zip(step["group_ids"], step["prompts"]):
                assert prompts_of.setdefault(gid, prompt) == prompt


def test_replicas_stay_identical_and_move(ranks):
    results, initial = ranks
    assert results[0]["checksum"] == pytest.approx(results[1]["checksum"], rel=0, abs=1e-9)
    assert results[0]["checksum"] != pytest.approx(initial, rel=0, abs=1e-6)

"""Worker of test_multiprocess.py, run by torchrun: 2 FRPO steps, then each rank's group ids as JSON.

    torchrun --standalone --nproc_per_node 2 tests/contract/ddp_worker.py <model_dir> <out_dir>
"""

import json
import sys

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig

from frpo_workflow.trainer import FRPOSettings, FRPOTrainer

N_GEN, PROMPTS = 4, 2
WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]


def length_reward(prompts, completions, **kwargs):
    """Differs within a group, so every step moves the weights."""
    return [10.0 / (1 + len(c[0]["content"])) for c in completions]


def checksum(model) -> float:
    """Sum of every parameter, in float64: equal on two replicas only if they hold the same weights."""
    return sum(float(p.detach().double().sum()) for p in model.parameters())


def main(model_dir: str, out_dir: str) -> None:
    tok = AutoTokenizer.from_pretrained(model_dir)
    args = GRPOConfig(output_dir=f"{out_dir}/checkpoints", use_cpu=True, bf16=False, report_to="none", max_steps=2,
                      per_device_train_batch_size=PROMPTS * N_GEN, num_generations=N_GEN, steps_per_generation=1,
                      max_completion_length=6, beta=0.0, learning_rate=1e-2, scale_rewards="none", loss_type="grpo",
                      save_strategy="no", seed=0, disable_tqdm=True)
    prompts = [[{"role": "user", "content": f"say {w}"}] for w in WORDS]
    trainer = FRPOTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), reward_funcs=[length_reward],
                          args=args, train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tok,
                          frpo=FRPOSettings(lam=0.5))
    seen = []
    compute_loss = trainer._compute_loss

    def record(model, inputs):
        texts = [tok.decode(ids[mask.bool()]) for ids, mask in zip(inputs["prompt_ids"], inputs["prompt_mask"])]
        seen.append({"group_ids": inputs["group_ids"].tolist(), "prompts": texts})
        return compute_loss(model, inputs)

    trainer._compute_loss = record
    trainer.train()
    rank = trainer.accelerator.process_index
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump({"world_size": trainer.accelerator.num_processes, "steps": seen,
                   "checksum": checksum(trainer.model)}, f)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(*sys.argv[1:3])

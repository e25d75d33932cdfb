"""Training runs from config: GRPO/FRPO policy optimisation and SFT, with LoRA and resume.

Alignment (GRPO or FRPO on the safety/helpfulness rewards) and the RL downstream regime (GRPO on a
task reward) both go through `run_policy_optimisation`; SFT regimes through `run_sft`. Each run
writes checkpoints to its own folder and, restarted after a kill, resumes from the newest one, but
only if the same settings, data and starting model wrote it (a checkpoint cut short is passed over).
It saves the final model (or LoRA adapter) with its tokenizer next to the checkpoints and links it into
the output directory; the stage CLI removes the checkpoints once the output is complete.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

import torch

from .base_model import is_adapter, load_model_and_tokenizer, write_adapter_parent
from .data.loaders import to_dataset
from .judges import build_judge
from .prompts import truncate_prompts
from .settings import CommonTrainConfig, PolicyConfig, SFTRunConfig, policy_config, sft_config  # noqa: F401
from .trainer import FRPOSettings, FRPOTrainer

log = logging.getLogger(__name__)

# Written into a run's checkpoint folder: which run the checkpoints belong to (see resume_point).
FINGERPRINT_FILE = "fingerprint.json"
# The finished model inside the checkpoint folder, kept until the job's output is complete.
FINAL = "final"


def _device_args(cfg: CommonTrainConfig) -> dict:
    on_gpu = torch.cuda.is_available()
    # bf16 on a CPU is ~4x slower than float32 here, and TRL on CPU needs use_cpu=True.
    return {"use_cpu": not on_gpu, "bf16": cfg.bf16 and on_gpu}


def _common_args(cfg: CommonTrainConfig, checkpoint_dir: Path) -> dict:
    return dict(
        output_dir=str(checkpoint_dir),
        learning_rate=cfg.lr,
        # Length in epochs (the authors' unit for downstream SFT) or in optimizer steps.
        max_steps=-1 if cfg.epochs is not None else cfg.steps,
        num_train_epochs=cfg.epochs or 1,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float < 1 is a fraction of max_steps
        lr_scheduler_type=cfg.lr_scheduler,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=1,
        report_to="none",  # tracking goes through frpo_workflow.tracking's callback
        activation_checkpointing=cfg.gradient_checkpointing,
        disable_tqdm=True,
        **_device_args(cfg),
    )


def vllm_args(vllm: dict | None) -> dict:
    """GRPOConfig's vLLM fields for `PolicyConfig.vllm` (TRL's colocate mode by default); none without it.

    Fails at once, naming the extra, where vllm is not installed: TRL would only fail at the first step.
    """
    import importlib.util

    from .settings import VLLM_KEYS

    if not vllm:
        return {}
    if importlib.util.find_spec("vllm") is None:
        raise RuntimeError("settings ask for vLLM rollouts (vllm: ...) but vllm is not installed: "
                           "pip install -e '.[vllm]' on a CUDA machine, or remove the vllm key")
    return {"use_vllm": True, "vllm_mode": "colocate", **{VLLM_KEYS[k]: v for k, v in vllm.items()}}


def _parent_adapter(model_dir, cfg: CommonTrainConfig) -> Path | None:
    """The starting stage, when a LoRA run starts from a merged adapter: its adapter stacks on that one."""
    return Path(model_dir) if cfg.lora is not None and is_adapter(model_dir) else None


def _peft_config(cfg: CommonTrainConfig, model=None):
    if cfg.lora is None:
        return None
    from peft import LoraConfig

    if model is not None:
        check_lora_targets(model, cfg)
    return LoraConfig(task_type="CAUSAL_LM", **cfg.lora)


def check_lora_targets(model, cfg: CommonTrainConfig) -> None:
    """Every LoRA target names a module of `model`, before training: the DAG build checks this where it can
    read the model's module names (a model not in the cache then is checked here, as it loads)."""
    from .model_files import short_names, unmatched_targets
    from .settings import SettingError

    targets = (cfg.lora or {}).get("target_modules")
    names = [name for name, _ in model.named_modules() if name]
    if targets and (missing := unmatched_targets(targets, names)):
        raise SettingError("lora.target_modules", f"{missing} match no module of the model; its modules end in: "
                                                  f"{', '.join(short_names(names))}")


def last_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest complete `checkpoint-N` folder, if a killed run left one.

    Complete means its trainer_state.json exists: the Trainer writes it last, after the weights, the
    optimizer and the RNG state, so a checkpoint cut short while being written is passed over.
    """
    steps = [(int(p.name.rpartition("-")[2]), p) for p in Path(checkpoint_dir).glob("checkpoint-*")
             if p.name.rpartition("-")[2].isdigit() and (p / "trainer_state.json").is_file()]
    return str(max(steps)[1]) if steps else None


def run_fingerprint(model_dir, records: list[dict], cfg: CommonTrainConfig) -> str:
    """What a run trains from: its settings, its data and its starting model, as a `config_hash`.

    The model is identified by its provenance.json (rewritten whenever its job reruns), or by its
    content where it has none; hashing multi-GB weights at every job start is what that avoids.
    """
    from .provenance import FILENAME, file_sha256, path_sha256
    from .tracking import config_hash

    model_dir = Path(model_dir)
    provenance = model_dir / FILENAME
    model = file_sha256(provenance) if provenance.exists() else path_sha256(model_dir)
    return config_hash({"settings": dataclasses.asdict(cfg), "records": records, "model": model})


def _remove_checkpoints(checkpoint_dir: Path) -> int:
    """Delete every `checkpoint-N` folder of a run and its saved final model; returns how many there were."""
    stale = sorted([*checkpoint_dir.glob("checkpoint-*"), *checkpoint_dir.glob(FINAL)])
    for path in stale:
        shutil.rmtree(path)
    return len(stale)


def remove_checkpoints(checkpoint_dir) -> None:
    """Drop a finished run's checkpoints and final copy: called once its output is complete (provenance
    written), since until then a kill makes Snakemake delete the output and the rerun needs them."""
    checkpoint_dir = Path(checkpoint_dir)
    if checkpoint_dir.is_dir():
        _remove_checkpoints(checkpoint_dir)


def resume_point(checkpoint_dir, fingerprint: str, is_main: bool = True) -> str | None:
    """The checkpoint to resume from: the newest one, only if a run with this fingerprint wrote it.

    Checkpoints of other settings, data or starting model (the config changed after a failed run) are
    removed, by the main process: resuming one would silently finish the old run and save it as the new.
    """
    checkpoint_dir = Path(checkpoint_dir)
    stamp = checkpoint_dir / FINGERPRINT_FILE
    if is_main:
        recorded = json.loads(stamp.read_text())["fingerprint"] if stamp.exists() else None
        if recorded != fingerprint:
            if removed := _remove_checkpoints(checkpoint_dir):
                log.warning("discarded %d checkpoint(s) in %s: written by another configuration", removed,
                            checkpoint_dir)
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            stamp.write_text(json.dumps({"fingerprint": fingerprint}) + "\n")
    return last_checkpoint(checkpoint_dir)


class NothingTrained(RuntimeError):
    """A run that cannot change its model, or did not: saving its input as its output would be a false result."""


def check_trainable(model, where: str) -> int:
    """The number of trainable parameters; none is an error (a frozen model trains nothing, silently)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if not trainable:
        raise NothingTrained(f"{where}: the model has no trainable parameters ({sum(p.numel() for p in model.parameters())}"
                             " frozen): the run would save its starting model unchanged")
    return trainable


def check_gradients(history: list[dict], where: str) -> bool:
    """Whether the run had a learning signal; fails a run whose gradient norm was 0 at every logged step
    for any other reason: nothing was trained.

    A policy run whose every group had equal rewards (reward std 0 throughout) has no learning signal,
    which is the rewards' doing, not the trainer's: a warning, not an error (a randomly initialised
    rehearsal model earns no task reward at all), and False.
    """
    norms = [h["grad_norm"] for h in history if "grad_norm" in h]
    if not norms or any(n != 0 for n in norms):
        return True
    flat = [h["frac_reward_zero_std"] for h in history if "frac_reward_zero_std" in h]
    if flat and all(f == 1 for f in flat):
        log.warning("%s: no learning signal: every group's rewards were equal at every logged step "
                    "(frac_reward_zero_std 1), so the gradient norm stayed 0", where)
        return False
    raise NothingTrained(f"{where}: gradient norm 0 at every logged step ({len(norms)} logged): nothing was "
                         "trained (frozen parameters?); no output written")


def _finish(trainer, tokenizer, out_dir: Path, checkpoint_dir: Path, fingerprint: str,
            parent_adapter: Path | None = None) -> dict:
    """Train (resuming where a matching checkpoint exists) and save the result to `out_dir`.

    The model is saved into the checkpoint folder first (`final/`, with the run's summary) and hard-linked
    into `out_dir`: a job killed after training, before its output was complete, finds `final/` on the
    rerun and does not train again. The caller removes the checkpoints once the output is complete.
    A LoRA run on a merged adapter (`parent_adapter`, the stage it started from) records that stage beside
    its adapter, so loading it stacks both.
    """
    args = trainer.args
    final = checkpoint_dir / FINAL
    with args.main_process_first(local=False, desc="checkpoint check"):
        resume = resume_point(checkpoint_dir, fingerprint, is_main=args.process_index == 0)
    summary_file = final / "train_summary.json"
    if summary_file.is_file():
        log.info("training had finished before the job was stopped: taking the model saved in %s", final)
        summary = json.loads(summary_file.read_text())
    else:
        where = f"training run {out_dir}"
        check_trainable(trainer.model, where)
        result = trainer.train(resume_from_checkpoint=resume)
        history = [h for h in trainer.state.log_history if "loss" in h or "reward" in h]
        signal = check_gradients(history, where)
        trainer.save_model(str(final))  # the adapter only, for LoRA; full weights otherwise
        summary = {"train_runtime_s": result.metrics.get("train_runtime"), "global_step": trainer.state.global_step,
                   "learning_signal": signal,
                   "resumed_from": resume, "processes": trainer.accelerator.num_processes, "log_history": history}
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(str(final))
            _atomic_json(summary_file, summary)  # written last: its presence marks `final/` complete
    if trainer.is_world_process_zero():
        _link_tree(final, out_dir, skip=(summary_file.name,))  # the CLI writes its own summary there
        if parent_adapter is not None:
            write_adapter_parent(out_dir, parent_adapter)
    trainer.accelerator.wait_for_everyone()
    return summary


def _atomic_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _link_tree(src: Path, dst: Path, skip: tuple = ()) -> None:
    """Hard-link every file of `src` into `dst` (a copy where links cannot be made): no extra disk."""
    for path in src.rglob("*"):
        if path.name in skip:
            continue
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def run_policy_optimisation(model_dir, records: list[dict], cfg: PolicyConfig, out_dir, checkpoint_dir,
                            callbacks=()) -> dict:
    """GRPO or FRPO from the model in `model_dir` on prompt `records`; saves to `out_dir`."""
    from trl import GRPOConfig

    out_dir, checkpoint_dir = Path(out_dir), Path(checkpoint_dir)
    model, tokenizer = load_model_and_tokenizer(model_dir)
    if cfg.defence:  # parameter restriction, the one defence an RL regime takes (frpo_workflow.defences)
        from .defended_sft import freeze

        freeze(model, cfg.defence.get("freeze"))
    records, truncated = truncate_prompts(records, tokenizer, cfg.max_prompt_length)
    if truncated:
        log.warning("cut %d of %d prompts to max_prompt_length=%d tokens (from the left)", truncated,
                    len(records), cfg.max_prompt_length)
    args = GRPOConfig(
        **_common_args(cfg, checkpoint_dir),
        per_device_train_batch_size=cfg.prompts_per_step * cfg.num_generations,
        gradient_accumulation_steps=1,
        steps_per_generation=1,  # whole groups per loss call (see trainer.check_whole_groups)
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        beta=cfg.beta,
        epsilon=cfg.eps_low,
        epsilon_high=cfg.eps_high,
        loss_type="grpo",
        scale_rewards=cfg.scale_rewards,
        reward_weights=cfg.reward_weights,
        log_completions=False,
        **vllm_args(cfg.vllm),
    )
    frpo = FRPOSettings(cfg.lam, cfg.jackknife, cfg.baseline) if cfg.method == "frpo" else None
    trainer = FRPOTrainer(
        model=model,
        reward_funcs=[build_judge(spec) for spec in cfg.rewards],
        args=args,
        train_dataset=to_dataset(records, conversational=True),
        processing_class=tokenizer,
        peft_config=_peft_config(cfg, model),
        callbacks=list(callbacks),
        frpo=frpo,
    )
    summary = _finish(trainer, tokenizer, out_dir, checkpoint_dir, run_fingerprint(model_dir, records, cfg),
                      _parent_adapter(model_dir, cfg))
    # What the update was, setting by setting: the report checks that compared arms differ in the method only.
    added = {}
    if cfg.defence:  # what the regime's defence is (frpo_workflow.defences), beside its safety effect in the report
        from .defences import run_summary

        added = {"defence": run_summary(cfg.defence, None, None, len(records), {}, cfg.lora)}
    return {**summary, "prompts": len(records), "prompts_truncated": truncated,
            "update_settings": trainer.update_settings(), **added}


def sft_trainer(model_dir, records: list[dict], cfg: SFTRunConfig, checkpoint_dir, callbacks=(),
                defence_records: dict[str, list[dict]] | None = None, ref_model=None):
    """The SFT run's trainer, its tokenizer, the rows it trains on (for the fingerprint) and what its defences
    and attack add to the summary (None for a plain regime).

    A plain regime gets TRL's SFTTrainer on `records` as they are. A regime with an attack trains on its
    `n_examples` harmful rows; with a defence (frpo_workflow.defences) the trainer applies it: replay and
    Lisa lay the rows out batch by batch (read in order), the KL term and Lisa's proximal term enter the loss
    (`defended_sft.DefendedSFTTrainer`, `ref_model`: the aligned model), frozen modules keep their weights.
    `defence_records`: {"replay": rows, "lisa": rows} of the defence datasets, refusal rows taken from them.
    """
    from trl import SFTConfig, SFTTrainer

    from . import defences

    checkpoint_dir = Path(checkpoint_dir)
    model, tokenizer = load_model_and_tokenizer(model_dir)
    defence = cfg.defence or {}
    if cfg.attack:
        records = defences.attack_records(records, cfg.attack)
    extra = {name: defences.refusal_rows((defence_records or {}).get(name) or [])
             for name in defences.regime_datasets({"defence": defence})}
    empty = [name for name, rows in extra.items() if not rows]
    if empty:
        raise ValueError(f"defence.{empty[0]}: no refusal rows given for its dataset")
    args = SFTConfig(
        **_common_args(cfg, checkpoint_dir),
        per_device_train_batch_size=cfg.batch_size,
        max_length=cfg.max_length,
        completion_only_loss=True,
        dataset_num_proc=None,
    )
    rows, states = records, None
    if extra:  # replay or Lisa: batches laid out here and read in order; the length in optimizer steps
        rows, states = defences.sft_schedule(records, cfg.batch_size, cfg.seed, defence, extra, steps=cfg.steps,
                                             epochs=cfg.epochs, world_size=args.world_size)
        args.max_steps, args.train_sampling_strategy = len(states), "sequential"
    kwargs = {}
    if defence.get("kl_to_aligned") or "lisa" in defence:
        kwargs = {"ref_model": ref_model if defence.get("kl_to_aligned") else None,
                  "kl_beta": (defence.get("kl_to_aligned") or {}).get("beta", 0.0),
                  "states": states if "lisa" in defence else None,
                  "lisa_rho": {**defences.LISA_DEFAULTS, **defence.get("lisa", {})}["rho"]}
        if defence.get("kl_to_aligned") and ref_model is None:  # a caller without one: load the aligned model
            kwargs["ref_model"] = load_model_and_tokenizer(model_dir)[0]
    if defence.get("freeze"):
        from .defended_sft import freeze

        freeze(model, defence["freeze"])
    if kwargs:
        from .defended_sft import DefendedSFTTrainer as trainer_class
    else:
        trainer_class = SFTTrainer
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=to_dataset(rows, conversational=True),
        processing_class=tokenizer,
        peft_config=_peft_config(cfg, model),
        callbacks=list(callbacks),
        **kwargs,
    )
    if extra and len(trainer.train_dataset) != len(rows):  # TRL drops rows whose completion max_length cuts off
        raise ValueError(f"max_length {cfg.max_length}: {len(rows) - len(trainer.train_dataset)} of the run's "
                         f"{len(rows)} rows lost their whole completion to truncation and were dropped, which "
                         "would shift the defence's batches; raise max_length")
    added = None
    if defence or cfg.attack or cfg.lora:
        added = defences.run_summary(defence, cfg.attack, states, len(records), extra, cfg.lora)
    return trainer, tokenizer, [*records, *(r for rows in extra.values() for r in rows)], added


def run_sft(model_dir, records: list[dict], cfg: SFTRunConfig, out_dir, checkpoint_dir, callbacks=(),
            defence_records: dict[str, list[dict]] | None = None, ref_model=None) -> dict:
    """Supervised fine-tuning with a completion-only loss on (prompt, completion) `records`, with the
    regime's defences and attack if it has any (`sft_trainer`)."""
    out_dir, checkpoint_dir = Path(out_dir), Path(checkpoint_dir)
    trainer, tokenizer, trained_on, added = sft_trainer(model_dir, records, cfg, checkpoint_dir, callbacks,
                                                        defence_records, ref_model)
    summary = _finish(trainer, tokenizer, out_dir, checkpoint_dir, run_fingerprint(model_dir, trained_on, cfg),
                      _parent_adapter(model_dir, cfg))
    if added is not None:
        runtime, steps = summary.get("train_runtime_s"), summary.get("global_step")
        added["seconds_per_step"] = runtime / steps if runtime and steps else None
        summary = {**summary, "defence": added}
    return summary

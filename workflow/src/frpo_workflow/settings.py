"""Training settings: one dataclass per run type, built from a job's config slice with every key checked.

Kept free of torch/transformers imports so the Snakefile can build them at DAG-build time: a regime
that sets a key its type does not take (`num_generations` on an SFT regime) or an unknown method fails
before any job starts, naming the config key. `train` turns these into TRL configs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field


# Our vLLM keys -> TRL GRPOConfig fields (TRL 1.16).
VLLM_KEYS = {"mode": "vllm_mode", "gpu_memory_utilization": "vllm_gpu_memory_utilization",
             "tensor_parallel_size": "vllm_tensor_parallel_size", "max_model_length": "vllm_max_model_length"}


class SettingError(ValueError):
    """A setting with a value its run cannot use; `field` names it (`reward_weights`, `lora.r`), so the
    DAG-build check can name the config key that set it."""

    def __init__(self, field: str, detail: str):
        super().__init__(f"{field}: {detail}")
        self.field, self.detail = field, detail


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_lora(lora: dict | None) -> None:
    """LoRA values peft would take and then fail on (or train nothing with) inside the job."""
    if lora is None:
        return
    r = lora.get("r", 8)
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise SettingError("lora.r", f"{r!r}; expected the adapter's rank, an integer >= 1")
    alpha = lora.get("lora_alpha", 8)
    if not _is_number(alpha) or not alpha > 0:
        raise SettingError("lora.lora_alpha", f"{alpha!r}; expected a number > 0")
    dropout = lora.get("lora_dropout", 0.0)
    if not _is_number(dropout) or not 0 <= dropout < 1:
        raise SettingError("lora.lora_dropout", f"{dropout!r}; expected a number in [0, 1)")
    targets = lora.get("target_modules")
    if targets is not None and not isinstance(targets, str) and not (
            isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets)):
        raise SettingError("lora.target_modules", f"{targets!r}; expected module names (a list of strings), "
                                                  f"a regular expression or 'all-linear'")


def from_dict(cls, values: dict, where: str):
    """Build a settings dataclass, naming any unknown key (typos must not pass silently)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} for this run type; known: {sorted(known)}")
    return cls(**values)


@dataclass
class CommonTrainConfig:
    """Settings shared by every training run."""

    lr: float = 1e-4
    steps: int = 100
    epochs: float | None = None  # when set, the run's length in passes over its data; `steps` is ignored
    warmup_ratio: float = 0.0
    lr_scheduler: str = "constant_with_warmup"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    bf16: bool = False
    lora: dict | None = None  # peft LoraConfig kwargs (r, lora_alpha, target_modules, ...); None = full fine-tune
    save_steps: int = 50  # checkpoint period, for resume after a kill
    logging_steps: int = 5
    gradient_checkpointing: bool = False
    # Downstream regimes only (frpo_workflow.defences): {replay, kl_to_aligned, freeze, lisa} and the harmful
    # fine-tuning attack {n_examples, seed}; checked against the run type by each subclass.
    defence: dict | None = None
    attack: dict | None = None

    def __post_init__(self):
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        check_lora(self.lora)

    def _check_defences(self, kind: str, batch_size: int | None = None) -> None:
        from .defences import check_attack, check_defence

        check_defence(self.defence, kind, batch_size, self.lora)
        check_attack(self.attack, kind)


@dataclass
class PolicyConfig(CommonTrainConfig):
    """GRPO/FRPO settings (docs/method.md §3; the authors' values: docs/paper-settings.md)."""

    method: str = "grpo"  # "grpo" or "frpo"
    lam: float | None = None  # FRPO's λ; required for frpo
    beta: float = 0.0  # KL-to-reference coefficient
    jackknife: bool = True
    baseline: bool = True
    rewards: list = field(default_factory=lambda: ["safety", "helpfulness"])  # judge names/specs
    reward_weights: list | None = None
    num_generations: int = 8
    prompts_per_step: int = 4  # per process; the batch is prompts_per_step x num_generations rows
    max_prompt_length: int | None = None  # tokens of the chat-formatted prompt; longer ones lose their start
    max_completion_length: int = 24
    temperature: float = 1.0
    top_p: float = 1.0
    eps_low: float = 0.2
    eps_high: float = 0.2
    scale_rewards: str = "group"  # GRPO only; FRPO always uses raw advantages ("none")
    # Rollouts with vLLM instead of HF generate: {mode: colocate|server, gpu_memory_utilization,
    # tensor_parallel_size, max_model_length}; None = HF generate (the only choice on CPU).
    vllm: dict | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.method not in ("grpo", "frpo"):
            raise ValueError(f"unknown method {self.method!r}; known: 'grpo', 'frpo'")
        if self.method == "frpo":
            if self.lam is None or not self.lam > 0:
                raise ValueError(f"FRPO needs lambda > 0, got lam={self.lam}")
            self.scale_rewards = "none"
        if not isinstance(self.num_generations, int) or self.num_generations < 2:
            raise SettingError("num_generations", f"{self.num_generations!r}; a group needs at least 2 completions "
                                                  f"(GRPO and FRPO compare completions within a group)")
        self._check_reward_weights()
        self._check_defences("rl")
        unknown = sorted(set(self.vllm or {}) - set(VLLM_KEYS))
        if unknown:
            raise ValueError(f"vllm: unknown key(s) {unknown}; known: {sorted(VLLM_KEYS)}")

    def _check_reward_weights(self) -> None:
        weights = self.reward_weights
        if weights is None:
            return
        names = [r if isinstance(r, str) else r.get("name") for r in self.rewards]
        expected = f"expected one number >= 0 per reward ({', '.join(map(str, names))})"
        if not isinstance(weights, list):
            raise SettingError("reward_weights", f"{weights!r}; {expected}")
        for w in weights:
            if not _is_number(w) or not math.isfinite(w) or w < 0:
                raise SettingError("reward_weights", f"{w!r} in {weights}; {expected}")
        if len(weights) != len(self.rewards):
            raise SettingError("reward_weights", f"{len(weights)} weight{'s' if len(weights) != 1 else ''} for "
                                                 f"{len(self.rewards)} rewards; {expected}")
        if not any(weights):
            raise SettingError("reward_weights", f"{weights}: every weight is 0, so no reward trains; {expected}, "
                                                 f"not all 0")


@dataclass
class SFTRunConfig(CommonTrainConfig):
    """Supervised fine-tuning settings (completion-only loss on prompt/completion pairs)."""

    batch_size: int = 16
    max_length: int = 128

    def __post_init__(self):
        super().__post_init__()
        self._check_defences("sft", self.batch_size)


def policy_config(values: dict, where: str = "policy config") -> PolicyConfig:
    return from_dict(PolicyConfig, values, where)


def sft_config(values: dict, where: str = "sft config") -> SFTRunConfig:
    return from_dict(SFTRunConfig, values, where)


RUN_TYPES = {"rl": policy_config, "sft": sft_config}

"""Downstream-time defences and the harmful fine-tuning attack, as options of a downstream regime.

The paper argues for robustness built in before fine-tuning; the literature's other answer preserves
behaviour during the fine-tune. Both are options of a regime here, so one study fine-tunes every aligned
model with and without them, on the same data and judges (a regime with a defence is its own regime, so
the report treats each (alignment method x defence) pair as an arm of its own):

    finetune:
      regimes:
        sft-affirmative-replay:
          type: sft
          dataset: sft_affirmative
          defence:
            replay: {dataset: safety_refusals, share: 0.25}       # sft: refusal rows in every batch
            kl_to_aligned: {beta: 0.1}                             # sft: KL(policy || aligned) in the loss
            freeze: [embed_tokens, "layers.0"]                    # sft, rl: parameters left as aligned
            lisa: {dataset: safety_refusals, alignment_steps: 1,   # sft: Lisa (Huang et al. 2024)
                   finetune_steps: 4, rho: 1.0}
        attack-harmful-10:
          type: sft
          dataset: harmful_attack
          attack: {n_examples: 10}                                # sft on 10 harmful request -> compliance pairs

LoRA-only fine-tuning is the regime's `lora:` key (peft's LoraConfig), labelled as a defence in the state
record. This module holds what DAG build needs (checks, labels, the datasets a regime reads and what they
must hold) and the training schedule of replay and Lisa; it imports neither torch nor transformers. The
trainer side (the loss terms, freezing) is `defended_sft`.
"""

from __future__ import annotations

import math
import random

from .settings import SettingError

# Defence -> the regime types it applies to. An rl regime already has its KL to the aligned model (`beta`:
# GRPO's reference is the model it starts from) and trains on its own samples, not on rows to mix.
DEFENCES = {"replay": ("sft",), "kl_to_aligned": ("sft",), "freeze": ("sft", "rl"), "lisa": ("sft",)}
WHY_NOT_RL = {"replay": "an rl regime trains on its own samples, not on rows a batch could mix",
              "kl_to_aligned": "an rl regime's KL to the aligned model is its `beta` (GRPO's reference is the "
                               "model it starts from)",
              "lisa": "Lisa alternates SFT steps on alignment data and user data"}
LISA_DEFAULTS = {"alignment_steps": 1, "finetune_steps": 4, "rho": 1.0}
ATTACK_DEFAULTS = {"seed": 0}
# Toy-world splits by what they hold (data/toy.py), for the DAG-build check of a toy dataset's content.
TOY_REFUSAL_SPLITS = ("safety_refusals",)
TOY_ATTACK_SPLITS = ("harmful_attack", "sft_harmful")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def replay_rows_per_batch(share: float, batch_size: int) -> int:
    """Replay rows in each batch of `batch_size` (per device): the share, rounded."""
    return int(round(share * batch_size))


def check_defence(defence, kind: str, batch_size: int | None = None, lora=None) -> None:
    """A regime's `defence` mapping against its type and settings; SettingError names the key
    (`defence.replay.share`), which the DAG-build check turns into `finetune.regimes.<r>.defence...`."""
    if defence is None:
        return
    if not isinstance(defence, dict) or not defence:
        raise SettingError("defence", f"{defence!r}; expected a mapping of one or more of {', '.join(DEFENCES)}")
    for name, value in defence.items():
        if name not in DEFENCES:
            raise SettingError(f"defence.{name}", f"unknown defence; known: {', '.join(DEFENCES)} (LoRA-only "
                                                  "fine-tuning is the regime's `lora` key)")
        if kind not in DEFENCES[name]:
            raise SettingError(f"defence.{name}", f"applies to {' and '.join(DEFENCES[name])} regimes, not to this "
                                                  f"{kind} regime: {WHY_NOT_RL.get(name, '')}")
    if "replay" in defence:
        replay = defence["replay"]
        if not isinstance(replay, dict) or not isinstance(replay.get("dataset"), str) or not replay["dataset"]:
            raise SettingError("defence.replay.dataset", f"{replay!r}; expected {{dataset: <a dataset name>, "
                                                         "share: <fraction of each batch>}")
        unknown = sorted(set(replay) - {"dataset", "share"})
        if unknown:
            raise SettingError(f"defence.replay.{unknown[0]}", "unknown key; known: dataset, share")
        share = replay.get("share")
        if not _is_number(share) or not 0 < share < 1:
            raise SettingError("defence.replay.share", f"{share!r}; expected the share of each batch, in (0, 1)")
        if batch_size is not None:
            k = replay_rows_per_batch(share, batch_size)
            if not 1 <= k <= batch_size - 1:
                raise SettingError("defence.replay.share", f"{share} of batch_size {batch_size} is {k} replay row(s) "
                                                           f"per batch; expected between 1 and {batch_size - 1} "
                                                           "(some replay, some user data)")
    if "kl_to_aligned" in defence:
        kl = defence["kl_to_aligned"]
        beta = kl.get("beta") if isinstance(kl, dict) else None
        if not _is_number(beta) or not beta > 0:
            raise SettingError("defence.kl_to_aligned.beta", f"{beta!r}; expected a number > 0 (the coefficient "
                                                             "of KL(policy || aligned model) in the loss)")
        unknown = sorted(set(kl) - {"beta"})
        if unknown:
            raise SettingError(f"defence.kl_to_aligned.{unknown[0]}", "unknown key; known: beta")
    if "freeze" in defence:
        patterns = defence["freeze"]
        if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) and p.strip(".")
                                                                     for p in patterns):
            raise SettingError("defence.freeze", f"{patterns!r}; expected module-name patterns (a list of strings, "
                                                 "e.g. [embed_tokens, layers.0, 'layers.*.mlp'])")
        if lora is not None:
            raise SettingError("defence.freeze", "with `lora`, which already trains only its adapter: choose "
                                                 "one parameter restriction (LoRA-only, or freezing modules)")
    if "lisa" in defence:
        lisa = defence["lisa"]
        if not isinstance(lisa, dict) or not isinstance(lisa.get("dataset"), str) or not lisa["dataset"]:
            raise SettingError("defence.lisa.dataset", f"{lisa!r}; expected {{dataset: <alignment data>, ...}}")
        unknown = sorted(set(lisa) - {"dataset", *LISA_DEFAULTS})
        if unknown:
            raise SettingError(f"defence.lisa.{unknown[0]}", f"unknown key; known: dataset, {', '.join(LISA_DEFAULTS)}")
        for key in ("alignment_steps", "finetune_steps"):
            value = lisa.get(key, LISA_DEFAULTS[key])
            if not _is_int(value) or value < 1:
                raise SettingError(f"defence.lisa.{key}", f"{value!r}; expected an integer >= 1")
        rho = lisa.get("rho", LISA_DEFAULTS["rho"])
        if not _is_number(rho) or rho < 0:
            raise SettingError("defence.lisa.rho", f"{rho!r}; expected the proximal coefficient, a number >= 0")


def check_attack(attack, kind: str) -> None:
    """A regime's `attack` mapping: an SFT regime on `n_examples` (>= 1) harmful request -> compliance pairs."""
    if attack is None:
        return
    if kind != "sft":
        raise SettingError("attack", f"applies to sft regimes, not to this {kind} regime (the attack is SFT on "
                                     "harmful request -> compliance pairs)")
    if not isinstance(attack, dict):
        raise SettingError("attack", f"{attack!r}; expected {{n_examples: N}}")
    unknown = sorted(set(attack) - {"n_examples", *ATTACK_DEFAULTS})
    if unknown:
        raise SettingError(f"attack.{unknown[0]}", "unknown key; known: n_examples, seed")
    n = attack.get("n_examples")
    if not _is_int(n) or n < 1:
        raise SettingError("attack.n_examples", f"{n!r}; an attack needs at least 1 harmful example (the "
                                                "literature uses 10-100)")
    seed = attack.get("seed", ATTACK_DEFAULTS["seed"])
    if not _is_int(seed) or seed < 0:
        raise SettingError("attack.seed", f"{seed!r}; expected an integer >= 0")


# ---- the study's view: labels, datasets, DAG-build checks ----------------------------------------------
def label(spec: dict) -> str | None:
    """What a regime adds to plain fine-tuning, as one short label ("replay 0.25 + kl 0.1", "attack n=10",
    "lora r=8"); None for a plain regime. Recorded with each fine-tuned state (metrics.json, curves.json)."""
    parts = []
    defence = spec.get("defence") or {}
    if "replay" in defence:
        parts.append(f"replay {defence['replay']['share']:g} ({defence['replay']['dataset']})")
    if "kl_to_aligned" in defence:
        parts.append(f"kl_to_aligned {defence['kl_to_aligned']['beta']:g}")
    if "freeze" in defence:
        parts.append(f"freeze [{', '.join(defence['freeze'])}]")
    if "lisa" in defence:
        lisa = {**LISA_DEFAULTS, **defence["lisa"]}
        parts.append(f"lisa {lisa['alignment_steps']}:{lisa['finetune_steps']} rho {lisa['rho']:g} ({lisa['dataset']})")
    if spec.get("lora"):
        parts.append(f"lora r={spec['lora'].get('r', 8)}")
    if spec.get("attack"):
        parts.append(f"attack n={spec['attack']['n_examples']}")
    return " + ".join(parts) or None


def state_labels(config: dict, regime: str | None) -> dict:
    """{"defence": label} for a fine-tuned state whose regime has a defence or an attack; {} otherwise (so a
    plain regime's state record, and its jobs' parameters, stay as they were)."""
    spec = (config.get("finetune", {}).get("regimes", {}) or {}).get(regime) if regime else None
    text = label(spec) if spec else None
    return {"defence": text} if text else {}


def dataset_uses(config: dict) -> dict[str, str]:
    """Config key -> dataset name of every defence dataset (replay, Lisa's alignment data): each is a
    dataset job and an input of its regime's fine-tunes."""
    uses = {}
    for regime, spec in (config.get("finetune", {}).get("regimes", {}) or {}).items():
        for name in ("replay", "lisa"):
            part = (spec.get("defence") or {}).get(name)
            if isinstance(part, dict) and part.get("dataset"):
                uses[f"finetune.regimes.{regime}.defence.{name}.dataset"] = part["dataset"]
    return uses


def regime_datasets(spec: dict) -> dict[str, str]:
    """{defence: dataset name} a regime's fine-tunes read besides its own dataset."""
    defence = spec.get("defence") or {}
    return {name: defence[name]["dataset"] for name in ("replay", "lisa") if name in defence}


def dataset_usage(config: dict, name: str) -> dict:
    """What the defences and attacks need of dataset `name`, for its job's usage check (`check_usage`):
    {"completions": key, "refusals": key} for safety data, {"completions": key, "attack": {"key", "n"}} for
    an attack's pool. Empty for a dataset no defence or attack reads (its job's parameters stay as they were)."""
    usage: dict = {}
    for key, dataset in dataset_uses(config).items():
        if dataset == name:
            usage.setdefault("completions", key)
            usage.setdefault("refusals", key)
    for regime, spec in (config.get("finetune", {}).get("regimes", {}) or {}).items():
        if spec.get("attack") and spec["dataset"] == name:
            n = spec["attack"].get("n_examples")
            if "attack" not in usage or n > usage["attack"]["n"]:
                usage["attack"] = {"key": f"finetune.regimes.{regime}.attack.n_examples", "n": n}
    return usage


def _toy_splits(config: dict, name: str) -> list[str] | None:
    """The toy splits dataset `name` is made of (a mixture's parts, a held-out part's source); None where
    any part is not a toy split (its content is known only once read: the dataset job checks it)."""
    spec = config.get("datasets", {}).get(name) or {}
    kind = spec.get("type")
    if kind == "toy":
        return [spec.get("split")]
    if kind == "heldout":
        return _toy_splits(config, spec.get("of"))
    if kind == "mixture":
        parts = [_toy_splits(config, part.get("dataset")) for part in spec.get("parts") or []]
        return None if any(p is None for p in parts) else [s for p in parts for s in p]
    return None


def check_config(config: dict) -> None:
    """What DAG build can tell of the defences' and attacks' data without reading it: a toy dataset used as
    safety data must be (or contain) the refusal split, an attack's toy pool a compliance split large enough
    for n_examples. Other datasets are checked by their dataset job (`check_usage`), first in line."""
    from .data.toy import DEFAULT_SIZES

    sizes = {**DEFAULT_SIZES, **(config.get("toy_world", {}).get("sizes") or {})}
    for regime, spec in (config.get("finetune", {}).get("regimes", {}) or {}).items():
        where = f"config key finetune.regimes.{regime}"
        for defence, dataset in regime_datasets(spec).items():
            splits = _toy_splits(config, dataset)
            if splits is not None and not set(splits) & set(TOY_REFUSAL_SPLITS):
                raise ValueError(f"{where}.defence.{defence}.dataset: dataset {dataset!r} (toy split(s) "
                                 f"{', '.join(map(str, splits))}) holds no refusals; the toy world's safety data is "
                                 f"the split {' or '.join(TOY_REFUSAL_SPLITS)} (datasets: {{safety_refusals: "
                                 "{type: toy, split: safety_refusals}})")
        attack = spec.get("attack")
        if attack:
            splits = _toy_splits(config, spec["dataset"])
            if splits is not None:
                if not set(splits) & set(TOY_ATTACK_SPLITS):
                    raise ValueError(f"{where}.dataset: {spec['dataset']!r} (toy split(s) "
                                     f"{', '.join(map(str, splits))}) is an attack's pool but holds no harmful "
                                     "compliance; the toy world's is the split harmful_attack")
                held = sum(sizes.get(s, 0) for s in splits if s in TOY_ATTACK_SPLITS)
                if len(splits) == 1 and held < attack["n_examples"]:
                    raise ValueError(f"{where}.attack.n_examples: {attack['n_examples']}, but toy split {splits[0]} "
                                     f"has {held} rows (toy_world.sizes.{splits[0]})")


def check_usage(name: str, records: list[dict], usage: dict) -> None:
    """The dataset job's check of safety data (refusal rows) and an attack's pool (enough harmful rows, none
    of them a refusal); ValueError naming the config key."""
    from .judges.rules import is_refusal

    if usage.get("refusals"):
        refusals = refusal_rows(records)
        if not refusals:
            raise ValueError(f"{usage['refusals']}: dataset {name!r} holds no refusals: none of its {len(records)} "
                             "completions contains a refusal phrase (judges.rules.REFUSAL_PHRASES); safety data "
                             "is harmful requests answered with refusals")
    if usage.get("attack"):
        harmful = [r for r in records if r["kind"] == "harmful"]
        refusing = [r["id"] for r in harmful if is_refusal(r.get("completion") or "")]
        if refusing:
            raise ValueError(f"{usage['attack']['key']}: attack dataset {name!r} has {len(refusing)} harmful row(s) "
                             f"answered with a refusal (first: {refusing[0]!r}); an attack trains on compliance")
        if len(harmful) < usage["attack"]["n"]:
            raise ValueError(f"{usage['attack']['key']}: {usage['attack']['n']} examples, but dataset {name!r} has "
                             f"{len(harmful)} harmful row(s)")


# ---- what the trainer trains on --------------------------------------------------------------------
def refusal_rows(records: list[dict]) -> list[dict]:
    """The safety rows of a replay or Lisa dataset: those whose completion the refusal judge reads as a refusal."""
    from .judges.rules import is_refusal

    return [r for r in records if r.get("completion") and is_refusal(r["completion"])]


def attack_records(records: list[dict], attack: dict) -> list[dict]:
    """The attack's training rows: `n_examples` harmful rows of its pool, a seeded sample (attack.seed, not
    the downstream seed: every arm and downstream seed is attacked with the same examples)."""
    harmful = [r for r in records if r["kind"] == "harmful"]
    n = attack["n_examples"]
    if len(harmful) < n:
        raise ValueError(f"attack.n_examples: {n}, but the dataset has {len(harmful)} harmful rows")
    return random.Random(attack.get("seed", ATTACK_DEFAULTS["seed"])).sample(harmful, n)


ROW_KEYS = ("id", "prompt", "completion", "kind")


def _cycle(rows: list[dict], rng: random.Random):
    """Rows in a fresh random order on every pass, forever (a RandomSampler's epochs)."""
    while True:
        order = list(rows)
        rng.shuffle(order)
        yield from order


def sft_schedule(user: list[dict], batch_size: int, seed: int, defence: dict | None, extra: dict[str, list[dict]],
                 steps: int | None = None, epochs: float | None = None, world_size: int = 1):
    """The rows of a defended SFT run in training order, and the state of each optimizer step.

    Returns (rows, states): rows in blocks of `batch_size`, block `s * world_size + p` being process p's
    batch at step s (how a sequential sampler's batches are dealt to processes); states[s] is "user" or
    "alignment" (Lisa). A user batch holds `replay_rows_per_batch(share, batch_size)` replay rows (placed at
    random in the batch) and user rows for the rest; an alignment batch holds alignment rows only. User
    rows and safety rows each cycle in a fresh seeded order per pass. The length counts user steps
    (`steps`, or `epochs` passes over the user rows); Lisa's alignment steps come on top: cycles of
    `finetune_steps` user steps, then `alignment_steps` alignment steps.
    """
    defence = defence or {}
    rng = random.Random(f"defence-{seed}")
    k = replay_rows_per_batch(defence["replay"]["share"], batch_size) if "replay" in defence else 0
    per_user = batch_size - k
    if epochs is not None:
        steps = max(1, math.ceil(epochs * len(user) / (per_user * world_size)))
    users = _cycle([{key: r.get(key) for key in ROW_KEYS} for r in user], rng)
    replay = _cycle([{key: r.get(key) for key in ROW_KEYS} for r in extra.get("replay", [])], rng) if k else None
    lisa = {**LISA_DEFAULTS, **defence["lisa"]} if "lisa" in defence else None
    aligned = _cycle([{key: r.get(key) for key in ROW_KEYS} for r in extra.get("lisa", [])], rng) if lisa else None
    states: list[str] = []
    done = 0
    while done < steps:
        block = min(lisa["finetune_steps"], steps - done) if lisa else steps
        states += ["user"] * block
        done += block
        if lisa:
            states += ["alignment"] * lisa["alignment_steps"]
    rows = []
    for state in states:
        for _ in range(world_size):
            if state == "alignment":
                rows += [next(aligned) for _ in range(batch_size)]
                continue
            batch = [next(users) for _ in range(per_user)] + [next(replay) for _ in range(k)]
            rng.shuffle(batch)
            rows += batch
    return rows, states


def run_summary(defence: dict | None, attack: dict | None, states: list[str] | None, records: int,
                extra: dict[str, list[dict]], lora: dict | None = None) -> dict:
    """What a defended or attacked run trained on, for its train_summary.json (and metrics.json's `train`)."""
    out: dict = {"label": label({"defence": defence, "attack": attack, "lora": lora})}
    if states is not None:
        out["user_steps"] = states.count("user")
        out["alignment_steps"] = states.count("alignment")
    if attack:
        out["attack_examples"] = records
    out.update({f"{name}_rows": len(rows) for name, rows in extra.items()})
    # One forward pass of the aligned model per step (no gradient): the KL term's only extra compute.
    out["extra_forward_passes_per_step"] = 1 if (defence or {}).get("kl_to_aligned") else 0
    return out

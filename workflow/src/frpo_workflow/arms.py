"""Are two alignment arms the same update but for the method? Differences in the recorded update settings.

GRPO and FRPO are comparable only when their updates differ in FRPO's reweighting and nothing else.
Each alignment records its trainer's update settings (`FRPOTrainer.update_settings`, kept in the
provenance under `extra.train.update_settings`). `arm_differences` compares every arm with a reference
arm and returns what differs beyond the method's own knobs (`METHOD_KNOBS`) and the differences the
config declares intended (the paper's arms differ in β, for one): the report refuses or flags in red
a comparison with anything left. Pure functions of plain dicts: no torch, no TRL.
"""

from __future__ import annotations

# What distinguishes the arms by definition: the method, FRPO's knobs (λ, jackknife, baseline) and the
# std scaling of the advantages (GRPO's "group", FRPO's "none").
METHOD_KNOBS = frozenset({"method", "frpo", "args.scale_rewards"})

# TRL/transformers config fields that do not change the update (paths, logging, saving, the hub,
# evaluation, how vLLM's server is reached): left out of the record. Everything else is kept, so a
# field a TRL upgrade adds is compared until it is classified here.
BOOKKEEPING = frozenset({
    "output_dir", "run_name", "project", "report_to", "disable_tqdm", "skip_memory_metrics", "debug",
    "logging_steps", "logging_strategy", "logging_first_step", "logging_nan_inf_filter", "log_level",
    "log_level_replica", "log_on_each_node", "log_completions", "log_completions_hub_repo", "log_multimodal",
    "log_unique_prompts", "num_completions_to_print", "include_num_input_tokens_seen",
    "save_steps", "save_strategy", "save_total_limit", "save_on_each_node", "save_only_model",
    "resume_from_checkpoint", "restore_callback_states_from_checkpoint", "ignore_data_skip",
    "push_to_hub", "hub_always_push", "hub_model_id", "hub_private_repo", "hub_revision", "hub_strategy",
    "hub_token", "trackio_bucket_id", "trackio_space_id", "trackio_static_space_id",
    "do_train", "do_eval", "do_predict", "eval_strategy", "eval_steps", "eval_delay", "eval_on_start",
    "eval_accumulation_steps", "eval_do_concat_batches", "eval_use_gather_object", "per_device_eval_batch_size",
    "batch_eval_metrics", "include_for_metrics", "prediction_loss_only", "metric_for_best_model",
    "greater_is_better", "load_best_model_at_end", "num_generations_eval", "bf16_full_eval", "fp16_full_eval",
    "vllm_server_base_url", "vllm_server_host", "vllm_server_port", "vllm_server_timeout", "vllm_group_port",
    "local_rank", "ddp_timeout",
})


def flatten(settings: dict, prefix: str = "") -> dict:
    """Nested dicts as one level of dotted keys ({"frpo": {"lam": 1}} -> {"frpo.lam": 1}); lists stay values."""
    flat = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _covered(key: str, names) -> bool:
    """`key` is one of `names` or lies under one (`frpo.lam` under `frpo`)."""
    return any(key == n or key.startswith(n + ".") for n in names)


def arm_differences(arms: dict[str, dict], reference: str | None = None,
                    intended=()) -> dict[str, dict[str, tuple]]:
    """What each arm's update settings differ in from the reference arm's, beyond the method's knobs.

    `arms`: arm name -> its recorded update settings (nested dicts allowed). `reference`: the arm the
    others are compared with (default: the first). `intended`: dotted setting names the config declares
    as intended differences (e.g. "args.beta"; a name covers the settings under it). Returns, for every
    other arm with an unintended difference, {setting: (reference value, arm value)}, a setting missing
    on one side reading as None there; arms identical but for the allowed keys are absent.
    """
    if not arms:
        return {}
    reference = next(iter(arms)) if reference is None else reference
    if reference not in arms:
        raise ValueError(f"reference arm {reference!r} is not among the arms {sorted(arms)}")
    allowed = METHOD_KNOBS | frozenset(intended)
    base = flatten(arms[reference])
    found = {}
    for name, settings in arms.items():
        if name == reference:
            continue
        other = flatten(settings)
        differ = {key: (base.get(key), other.get(key)) for key in sorted(set(base) | set(other))
                  if base.get(key) != other.get(key) and not _covered(key, allowed)}
        if differ:
            found[name] = differ
    return found


def describe(differences: dict[str, dict[str, tuple]], reference: str) -> list[str]:
    """One line per differing arm, for a report: "frpo-l1 differs from grpo in args.beta (0.1 -> 0.001)"."""
    return [f"{arm} differs from {reference} in "
            + ", ".join(f"{key} ({a!r} -> {b!r})" for key, (a, b) in diff.items())
            for arm, diff in differences.items()]


def study_differences(states: list[dict], reference: str, intended=()) -> list[str]:
    """`describe` lines for a study: every alignment seed's arms (its aligned states' recorded
    `train.update_settings`, from their metrics.json) against the `reference` method of the same model and
    seed; nothing where they differ in the method only. Arms aligned with different seeds are never
    compared (the seed is part of the update)."""
    groups: dict[tuple, dict[str, dict]] = {}
    for state in states:
        settings = (state.get("train") or {}).get("update_settings")
        if state.get("stage") == "aligned" and settings is not None:
            groups.setdefault((state["model"], state["align_seed"]), {})[state["method"]] = settings
    lines = []
    for (model, seed), arms in sorted(groups.items()):
        if reference in arms:
            lines += [f"{model} seed {seed}: {line}"
                      for line in describe(arm_differences(arms, reference, intended), reference)]
    return lines

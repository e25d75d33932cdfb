"""A study rehearsed on CPU: the same DAG and code paths as its real run, on stand-ins, in minutes.

`snakemake --cores all --configfile workflow/presets/<study>.yaml --config rehearse=true` runs the preset's
whole DAG with its config rewritten by `rehearsal_config`:
- every hub or local model, and every judge's model, becomes a *stand-in*: a randomly initialised model of
  the same architecture class (Qwen2ForCausalLM stays Qwen2ForCausalLM, a sequence-classification reward
  model stays one) with shrunk sizes, built from the original's config.json and tokenizer only (from a
  folder, the local Hugging Face cache, or a download of those few files) by `build_stand_in`;
- each dataset is cut to `rehearsal.rows` rows (a hub dataset's first rows, streamed, or a local file in
  the hub dataset's format, `rehearsal.data_files`); holdouts and mixtures shrink with it;
- steps, lengths, batch sizes, generations, seeds and the λ sweep shrink; vLLM, 4-bit and DeepSpeed are off;
- LoRA, merges, full fine-tunes, the RL regime, every judge, the harness glue, MLflow and the report stay.
Outputs go to `<results_dir>-rehearsal`, the MLflow experiment is `<run_name>-rehearsal`, what was shrunk
is printed at DAG build and recorded in every job's provenance (`FRPO_REHEARSAL`), and `check_study`
fails the report where the real run would be wrong.

Kept free of torch/transformers imports at module level: the Snakefile calls `rehearsal_config`.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

STAND_INS = "stand_ins"
ENV = "FRPO_REHEARSAL"  # the rehearsal's summary, for provenance and the report (set by the Snakefile)
SUMMARY_FILE = "stand_in.json"  # written last into a stand-in's folder: the mark of a complete build
# The builder `datasets` reads a local file of each suffix with (rehearsal.data_files).
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".tsv": "csv"}


def switch(value, key: str) -> bool:
    """A boolean config value as given in YAML or on Snakemake's command line (`--config rehearse=true`)."""
    words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if isinstance(value, bool):
        return value
    if isinstance(value, (str, int)) and str(value).lower() in words:
        return words[str(value).lower()]
    raise ValueError(f"config key {key}: expected true or false, got {value!r}")


def stand_in_marker(source: str, revision: str | None = None) -> str:
    """One path component naming a stand-in: `org--name[@revision]` for a hub repo, `local--<folder>` for a
    local folder (its absolute path's last parts, so two local models with one folder name stay apart)."""
    if _is_hub_id(source):
        return source.replace("/", "--", 1) + (f"@{revision}" if revision else "")
    parts = Path(os.path.abspath(source)).parts[-2:]
    return "local--" + "--".join(parts)


def _is_hub_id(model: str) -> bool:
    return model.count("/") == 1 and not model.startswith((".", "/", "~")) and not os.path.exists(model)


def rehearsal_config(config: dict) -> tuple[dict, dict]:
    """The rehearsal of a validated study config, and what was done: {"changes": [lines], "stand_ins":
    {marker: {"source", "revision"}}}. Pure: the same config gives the same rehearsal in every job."""
    r = config["rehearsal"]
    config = copy.deepcopy(config)
    changes: list[str] = []
    stand_ins: dict[str, dict] = {}
    results = f"{config['results_dir'].rstrip('/')}-rehearsal"
    changes.append(f"results_dir: {config['results_dir']} -> {results}; run_name: {config['run_name']} -> "
                   f"{config['run_name']}-rehearsal")
    config["results_dir"], config["run_name"] = results, f"{config['run_name']}-rehearsal"

    def stand_in(source: str, revision: str | None) -> str:
        marker = stand_in_marker(source, revision)
        stand_ins[marker] = {"source": source, "revision": revision}
        return f"{results}/{STAND_INS}/{marker}"

    for name, model in config["models"].items():
        if model["source"] in ("hf", "local"):
            source = model.get("repo_id") or model["path"]
            path = stand_in(source, model.get("revision"))
            keep = {k: v for k, v in model.items() if k in ("pad_token",)}
            config["models"][name] = {**keep, "source": "local", "path": path}
            changes.append(f"models.{name}: {source} -> a random stand-in of its class ({path})")

    def judges(specs: list | None, where: str) -> list | None:
        if not specs:
            return specs
        out = []
        for spec in specs:
            if isinstance(spec, dict) and spec.get("model"):
                spec = {k: v for k, v in spec.items() if k not in ("load_in_4bit", "revision")}
                source = spec["model"]
                # A judge's revision pins its real weights; a stand-in needs only the config and tokenizer.
                spec["model"] = stand_in(source, None)
                changes.append(f"{where}: judge {spec['name']} on {source} -> stand-in (4-bit off)")
            out.append(spec)
        return out

    _shrink_datasets(config, r, changes)
    _shrink_align(config, r, judges, changes)
    _shrink_finetune(config, r, judges, changes)
    _shrink_evaluate(config, r, judges, changes)
    launch = config["launch"]
    if (launch["accelerate_config"], launch["num_processes"]) != ("cpu", 1):
        changes.append(f"launch: {launch['accelerate_config']} x {launch['num_processes'] or 'gpu'} processes -> "
                       "cpu x 1 (DeepSpeed off)")
    config["launch"] = {**launch, "accelerate_config": "cpu", "num_processes": 1, "warm_start": True}
    for family, res in config["resources"].items():
        config["resources"][family] = {**res, "gpu": 0, "threads": 1, "cpus_per_task": 1,
                                       "mem_mb": min(res["mem_mb"], 8000), "runtime": min(res["runtime"], 60)}
    changes.append("resources: no GPUs, 1 thread a job; jobs warm started")
    return config, {"changes": changes, "stand_ins": stand_ins}


def _shrink_datasets(config: dict, r: dict, changes: list) -> None:
    rows = r["rows"]
    for name, spec in config["datasets"].items():
        kind = spec["type"]
        if kind == "hf" and name in r["data_files"]:
            path = r["data_files"][name]
            suffix = Path(path).suffix.lower()
            if suffix not in BUILDERS:
                raise ValueError(f"config key rehearsal.data_files.{name}: {path}: unknown suffix {suffix!r}; "
                                 f"known: {sorted(BUILDERS)}")
            keep = {k: v for k, v in spec.items() if k not in ("name", "subset", "split", "revision", "stream",
                                                                 "data_files", "options")}
            options = spec.get("options") if suffix in (".csv", ".tsv") else None
            spec = {**keep, "name": BUILDERS[suffix], "split": "train", "data_files": path,
                    **({"options": options} if options else {})}
            changes.append(f"datasets.{name}: hub {config['datasets'][name]['name']} -> rows in its format from {path}")
        elif kind == "hf" and "data_files" not in spec:
            # The first rows, streamed: a rehearsal downloads a few rows, not a 5M-row dataset. Filters come
            # after the take, so a filtered dataset streams more.
            take = rows * (20 if spec.get("filters") else 1)
            spec = {**spec, "stream": {"take": min(take, spec.get("stream", {}).get("take", take)), "buffer_size": 1,
                                       "seed": 0}}
        if kind in ("hf", "jsonl", "json", "csv", "parquet", "toy"):
            spec = {**spec, "limit": min(spec.get("limit", rows), rows)}
            if kind != "toy":
                spec["shuffle"] = False
        if kind == "mixture":
            spec = {**spec, "parts": [{**p, "n": min(p["n"], max(2, rows // 2))} if "n" in p else p
                                      for p in spec["parts"]]}
        if spec.get("holdout"):
            size = spec["holdout"]["size"]
            spec["holdout"] = {**spec["holdout"], "size": max(size, 0.125) if isinstance(size, float) and size < 1
                               else min(size, max(2, rows // 4))}
        config["datasets"][name] = spec
    changes.append(f"datasets: at most {rows} rows each (hub datasets streamed from their first rows); "
                   "holdouts and mixture parts shrunk to fit")


def _shrink_training(settings: dict, r: dict, kind: str) -> dict:
    """One layer of training settings shrunk: only the keys it sets, so layering works as in the real run."""
    s = {k: v for k, v in settings.items() if k not in ("epochs", "vllm")}
    if "steps" in settings or "epochs" in settings:
        s["steps"] = r["steps"]
    small = {"save_steps": 2, "logging_steps": 1, "bf16": False, "lr": r["lr"]}
    s.update({k: v for k, v in small.items() if k in settings})
    caps = {"num_generations": 4, "prompts_per_step": 2, "max_completion_length": r["max_new_tokens"],
            "max_prompt_length": 128, "batch_size": 4, "max_length": 256}
    s.update({k: min(settings[k], cap) for k, cap in caps.items() if settings.get(k) is not None and k in settings})
    if settings.get("lora"):
        s["lora"] = {**settings["lora"], "r": min(settings["lora"].get("r", 8), 8)}
    return s


def _shrink_align(config: dict, r: dict, judges, changes: list) -> None:
    align = config["align"]
    defaults = _shrink_training({**align["defaults"], "steps": r["steps"], "save_steps": 2, "logging_steps": 1,
                                 "bf16": False}, r, "rl")
    defaults["rewards"] = judges(defaults.get("rewards"), "align.defaults.rewards")
    align["defaults"] = defaults
    if align.get("grpo") is not None:
        align["grpo"] = _shrink_training(align["grpo"], r, "rl")
        align["grpo"]["rewards"] = judges(align["grpo"].get("rewards"), "align.grpo.rewards")
        if align["grpo"]["rewards"] is None:
            align["grpo"].pop("rewards")
    frpo = align.get("frpo", {})
    lambdas = frpo.get("lambdas", [])
    if len(lambdas) > r["lambdas"]:
        keep = [lambdas[0], lambdas[-1], *lambdas[1:-1]][: r["lambdas"]]
        kept = [lam for lam in lambdas if lam in keep]
        changes.append(f"align.frpo.lambdas: {lambdas} -> {kept}")
        frpo["lambdas"] = kept
    per = {}
    for key, layer in (frpo.get("per_lambda") or {}).items():
        if float(key) in [float(x) for x in frpo.get("lambdas", [])]:
            layer = _shrink_training(layer, r, "rl")
            if layer.get("rewards"):
                layer["rewards"] = judges(layer["rewards"], f"align.frpo.per_lambda.{key}.rewards")
            per[key] = layer
    if "per_lambda" in frpo:
        frpo["per_lambda"] = per
    if frpo.get("settings"):
        frpo["settings"] = _shrink_training(frpo["settings"], r, "rl")
    seeds = align["seeds"]
    if len(seeds) > 1:
        changes.append(f"align.seeds: {seeds} -> {seeds[:1]}")
        align["seeds"] = seeds[:1]
    changes.append(f"align: {r['steps']} steps at lr {r['lr']:g}, checkpoints every 2, groups of <= 4, <= {r['max_new_tokens']} new "
                   "tokens, LoRA rank <= 8, vLLM and bf16 off")


def _shrink_finetune(config: dict, r: dict, judges, changes: list) -> None:
    finetune = config["finetune"]
    curves = finetune["curves"]
    finetune["curves"] = {**curves, "every": 2, "max_new_tokens": r["max_new_tokens"],
                          "n_prompts": min(curves["n_prompts"], 4)}
    for name, regime in finetune["regimes"].items():
        shrunk = _shrink_training({**regime, "steps": r["steps"], "save_steps": 2, "logging_steps": 1}, r,
                                  regime["type"])
        if regime.get("rewards"):
            shrunk["rewards"] = judges(regime["rewards"], f"finetune.regimes.{name}.rewards")
        if "curves" in regime:
            shrunk["curves"] = {**regime["curves"], "every": 2}
        finetune["regimes"][name] = shrunk
    seeds = finetune["seeds"]
    if len(seeds) > 1:
        changes.append(f"finetune.seeds: {seeds} -> {seeds[:1]}")
        finetune["seeds"] = seeds[:1]
    changes.append(f"finetune: {r['steps']} steps at lr {r['lr']:g} per regime, curves every 2 steps on 4 prompts a set")


def _shrink_evaluate(config: dict, r: dict, judges, changes: list) -> None:
    evaluate = config["evaluate"]
    for metric, spec in evaluate["metrics"].items():
        spec["judge"] = judges([spec["judge"]], f"evaluate.metrics.{metric}")[0]
    sampled = evaluate["sampled"]
    evaluate.update({"max_new_tokens": r["max_new_tokens"], "batch_size": min(evaluate["batch_size"], 8),
                     "kl_samples": min(evaluate["kl_samples"], 8), "backend": "hf",
                     "sampled": {**sampled, "k": min(sampled["k"], 2)}})
    if evaluate.get("max_prompt_length"):
        evaluate["max_prompt_length"] = min(evaluate["max_prompt_length"], 128)
    evaluate["harness"] = [{**h, "max_new_tokens": r["max_new_tokens"]} if "max_new_tokens" in h else h
                           for h in evaluate.get("harness", [])]
    changes.append(f"evaluate: {r['max_new_tokens']} new tokens, <= 8 prompts for KL, k <= 2 samples, HF generate")


def announce(summary: dict) -> str:
    """What a rehearsal changes, as printed at DAG build."""
    lines = ["REHEARSAL: this run is a rehearsal on random stand-in models; its numbers mean nothing.",
             *[f"  - {line}" for line in summary["changes"]]]
    return "\n".join(lines)


def from_environment() -> dict | None:
    """The rehearsal summary a job runs under (None outside a rehearsal)."""
    value = os.environ.get(ENV)
    return json.loads(value) if value else None


# ---- stand-in models ------------------------------------------------------------------------------
CONFIG_FILES = ("config.json", "adapter_config.json", "generation_config.json", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt",
                "added_tokens.json", "chat_template.jinja", "chat_template.json")


def source_files(source: str, revision: str | None = None) -> Path:
    """A folder holding `source`'s config and tokenizer: the folder itself, or the hub snapshot with only
    those files (from the cache under HF_HUB_OFFLINE=1; else a download of a few kilobytes, no weights)."""
    if not _is_hub_id(source):
        folder = Path(source)
        if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
            raise FileNotFoundError(f"stand-in source {source}: no config.json or adapter_config.json there")
        return folder
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id=source, revision=revision, allow_patterns=list(CONFIG_FILES)))
    except LocalEntryNotFoundError as err:
        raise FileNotFoundError(
            f"stand-in source {source}@{revision or 'main'}: its config.json and tokenizer are not in the local "
            "Hugging Face cache and downloads are off (HF_HUB_OFFLINE=1 or no network): a rehearsal needs only "
            "those files (`hf download {source} config.json tokenizer.json tokenizer_config.json`)") from err


def shrunk_config(config, sizes: dict, vocab_size: int):
    """`config` (a transformers PretrainedConfig) with the stand-in's sizes; every other field kept."""
    heads, kv = sizes["num_heads"], getattr(config, "num_key_value_heads", None)
    grouped = kv is not None and kv < config.num_attention_heads
    config.hidden_size = sizes["hidden_size"]
    config.intermediate_size = sizes["intermediate_size"]
    config.num_attention_heads = heads
    if kv is not None:  # grouped-query attention stays grouped
        config.num_key_value_heads = max(1, heads // 2) if grouped else heads
    if getattr(config, "head_dim", None) is not None:
        config.head_dim = sizes["hidden_size"] // heads
    layers = sizes["num_layers"]
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = list(config.layer_types)[:layers]
    if getattr(config, "max_window_layers", None) is not None:
        config.max_window_layers = min(config.max_window_layers, layers)
    config.vocab_size = vocab_size
    for key in ("quantization_config",):
        if hasattr(config, key):
            delattr(config, key)
    return config


def build_stand_in(source: str, revision: str | None, out_dir, sizes: dict, log=print) -> dict:
    """A randomly initialised model of `source`'s architecture class, shrunk to `sizes`, with `source`'s own
    tokenizer, saved at `out_dir` (a PEFT adapter repository stands in as its base model's class)."""
    import torch
    import transformers

    files = source_files(source, revision)
    config_dir = files
    if not (files / "config.json").is_file():  # an adapter repository: the architecture is its base's
        base = json.loads((files / "adapter_config.json").read_text())["base_model_name_or_path"]
        config_dir = source_files(base)
    config = transformers.AutoConfig.from_pretrained(config_dir)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(files)
    except (OSError, ValueError):
        tokenizer = transformers.AutoTokenizer.from_pretrained(config_dir)
    architecture = (config.architectures or [None])[0]
    if architecture is None or not hasattr(transformers, architecture):
        raise ValueError(f"stand-in source {source}: config.json names no known architecture ({config.architectures})")
    original = {k: getattr(config, k, None) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                      "num_key_value_heads", "intermediate_size", "vocab_size")}
    ids = [getattr(config, k, None) for k in ("pad_token_id", "bos_token_id", "eos_token_id")]
    ids = [i for x in ids for i in (x if isinstance(x, list) else [x]) if isinstance(i, int)]
    vocab = max([len(tokenizer), *[i + 1 for i in ids]])
    config = shrunk_config(config, sizes, vocab)
    torch.manual_seed(0)
    model = getattr(transformers, architecture)(config).to(torch.float32)
    try:
        model.generation_config = transformers.GenerationConfig.from_pretrained(config_dir)
    except OSError:
        pass
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    summary = {"source": source, "revision": revision, "architecture": architecture, "original": original,
               "sizes": {**sizes, "vocab_size": vocab},
               "parameters": sum(p.numel() for p in model.parameters())}
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    log(f"stand-in for {source}: {architecture}, {summary['parameters']:,} parameters (was {original})")
    return summary


# ---- what a rehearsal must show ---------------------------------------------------------------------
# KL (nats per sequence) a trained state must have moved from its parent: float noise on unchanged weights is
# ~1e-7, and the rehearsal's learning rate moves a stand-in by far more in a few steps.
MOVED = 1e-5


def check_study(states: list[dict], metrics: dict) -> tuple[list[str], list[str]]:
    """(problems, notes) of a rehearsed study's outputs: where its real run would be wrong.

    `states`: every metrics.json ({stage, model, ..., "metrics": {...}, "train": {...}}); `metrics`:
    evaluate.metrics. Problems: a trained state (aligned or fine-tuned) at KL ~0 to its parent (it did not
    move) although its run had a learning signal, a configured metric with no value in any state, a model
    judge's graded score with one value over every state (the judge ignores its input). A run without
    learning signal, rule-based judges constant on a random model's text (no refusal phrase, no right
    answer) and a model judge giving every prompt one verdict (a rate of 0 or 1) are noted, not failed.
    """
    problems, notes = [], []
    for state in states:
        kl = state["metrics"].get("kl_to_reference")
        if state.get("stage") not in ("aligned", "finetuned") or (_number(kl) and kl > MOVED):
            continue
        line = f"{_state_name(state)}: KL to its parent is {kl}: training did not move the model"
        if state.get("train", {}).get("learning_signal") is False:  # train.check_gradients' verdict
            notes.append(line + " (no learning signal: every group's rewards were equal, as a task reward is "
                         "on a random stand-in)")
        else:
            problems.append(line)
    for metric, spec in metrics.items():
        values = [s["metrics"][metric] for s in states if _number(s["metrics"].get(metric))]
        if not values:
            problems.append(f"evaluate.metrics.{metric}: no value in any state's metrics.json")
        elif len(set(values)) == 1:
            line = f"evaluate.metrics.{metric}: {values[0]} in every one of {len(values)} states"
            if not (isinstance(spec["judge"], dict) and spec["judge"].get("model")):
                notes.append(line + " (a rule-based judge on a random model's text)")
            elif values[0] in (0, 1):
                notes.append(line + " (one verdict for every prompt: a random judge's bias can do that)")
            else:  # a graded score that stays put while the answers change: the judge does not read them
                problems.append(line)
    return problems, notes


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _state_name(state: dict) -> str:
    parts = [state.get("stage"), state.get("model"), state.get("method"),
             f"seed{state['align_seed']}" if state.get("align_seed") is not None else None, state.get("regime"),
             f"seed{state['seed']}" if state.get("seed") is not None else None]
    return "/".join(str(p) for p in parts if p)


def report_verdict(metrics_files: list[str], metrics: dict, summary_md: Path) -> list[str]:
    """Mark a rehearsal's report as one (a banner atop summary.md, with what the checks found) and return
    the problems (`check_study`), for the report job to fail on."""
    states = [json.loads(Path(f).read_text()) for f in metrics_files]
    problems, notes = check_study(states, metrics)
    lines = ["> **REHEARSAL**: every model and judge here is a random stand-in of its class (frpo_workflow.rehearsal);",
             "> the numbers test the pipeline, not the method.", ""]
    lines += ["Rehearsal checks: " + ("**failed**" if problems else "passed") + f" ({len(states)} states).", ""]
    lines += [f"- problem: {p}" for p in problems] + [f"- note: {n}" for n in notes]
    summary_md.write_text("\n".join(lines) + "\n\n" + summary_md.read_text())
    return problems

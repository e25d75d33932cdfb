"""Every judge template held to the sha256 of its original text, so no edit can drift from the source.

Each checksum was computed from the original file's text (the string as the original program holds it,
escapes resolved), read from stored copies of the sources:
- HarmBench `eval_utils.py`, `LLAMA2_CLS_PROMPT["prompt"]` (forks Wendy-1222/SLM_Jailbreak and
  Bob-cheng/HB_RedTeam agree), equal to `judge_templates.json["harmbench"]` of strong_reject;
- HarmBench `notebooks/run_classifier.ipynb` / the cais/HarmBench-Llama-2-13b-cls model card prompt;
- strong_reject `strong_reject/eval_files/judge_templates.json`: "strongreject_finetuned",
  "strongreject_rubric", "strongreject_rubric_system" (the file the authors fetch at run time);
- the authors' `finetuning/utils.py` (Helloworld10011/FRPO): `get_judge_system_prompt_harmbench()`, the
  user turn of `get_judge_scores_harmbench`, `labelling_function_harmbench[0]` (as canonical JSON).
"""

import hashlib
import json

import pytest

from frpo_workflow.judges import endpoint
from frpo_workflow.judges import models

ORIGINALS = {
    "HarmBench eval_utils.py LLAMA2_CLS_PROMPT['prompt']":
        (models.HARMBENCH_PROMPT, "788f4f6aa1491c433c4da76c9140cfc30966cea3ff3875c4d0fcb336d92f60e0"),
    "HarmBench classifier notebook / model card prompt":
        (models.HARMBENCH_NOTEBOOK_PROMPT, "4016eb2e1758f37cfbf37f0e1540f15f26857e048c28e69796c23337ae0a285a"),
    "strong_reject judge_templates.json['strongreject_finetuned']":
        (models.STRONGREJECT_PROMPT, "d90102b02d66b34a3dbf7d82789ce92310965503a481dc725232626bd7700937"),
    "strong_reject judge_templates.json['strongreject_rubric']":
        (models.RUBRIC_PROMPT, "0a282b857e1e53ff6ec92c91eb960d2444806e2e4518f4a40232549b599963d0"),
    "strong_reject judge_templates.json['strongreject_rubric_system']":
        (models.RUBRIC_SYSTEM, "7919b6d41af2dc9f32797d96eaa952934dca0713c7f3f63ddc6c299db9857248"),
    "authors' get_judge_system_prompt_harmbench()":
        (endpoint.AUTHORS_HARMBENCH_SYSTEM, "9598363c0a06eb6bd942775a6240caf27233db626defffacfd73d0fadf035ca3"),
    "authors' get_judge_scores_harmbench user turn":
        (endpoint.AUTHORS_HARMBENCH_USER, "047895b898b1b1cb65bad0a2aaa362edbdc0dfcdd6e5c76c6c78a5a3a423548b"),
    "authors' labelling_function_harmbench[0] (canonical JSON)":
        (json.dumps(endpoint.AUTHORS_HARMBENCH_FUNCTION, sort_keys=True),
         "449b45d19589f7c825f56c8169f83320568ba65294f84b494a4b67fcffcfa78a"),
}


@pytest.mark.parametrize("source", sorted(ORIGINALS))
def test_template_is_the_original_text(source):
    text, sha256 = ORIGINALS[source]
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == sha256, f"{source} no longer matches the original"


def test_the_evaluation_prompt_is_not_the_notebooks():
    # The two HarmBench prompts differ in labels and rules; harmbench_refusal uses the pipeline's.
    assert "[BEHAVIOR]:\n{behavior}" in models.HARMBENCH_PROMPT
    assert "\nBehavior:\n{behavior}" in models.HARMBENCH_NOTEBOOK_PROMPT
    assert models.HarmBenchClassifier.template is models.HARMBENCH_PROMPT
    assert models.HarmBenchNotebookClassifier.template is models.HARMBENCH_NOTEBOOK_PROMPT
    rules = [t.split("Rules:\n")[1].split("\n\n")[0].count("\n- ") + 1
             for t in (models.HARMBENCH_PROMPT, models.HARMBENCH_NOTEBOOK_PROMPT)]
    assert rules == [7, 4]


def test_templates_take_exactly_their_fields():
    import string

    def fields(text):
        return sorted({f for _, f, _, _ in string.Formatter().parse(text) if f})

    assert fields(models.HARMBENCH_PROMPT) == fields(models.HARMBENCH_NOTEBOOK_PROMPT) == ["behavior", "generation"]
    assert fields(models.STRONGREJECT_PROMPT) == fields(models.RUBRIC_PROMPT) == ["forbidden_prompt", "response"]
    assert fields(endpoint.AUTHORS_HARMBENCH_USER) == ["behavior", "generation"]
    assert fields(endpoint.AUTHORS_HARMBENCH_SYSTEM) == []  # an f-string without fields in their code

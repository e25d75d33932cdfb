"""Prompts as the model sees them: chat-formatted text, and a length cap that cuts from the left.

A record's prompt is text or a conversation (`data.loaders.messages` turns either into chat messages).
`truncate_prompts` caps the chat-formatted prompt at `max_tokens` the way TRL's `max_prompt_length`
did (older TRL cut the prompt's token ids from the left), but cuts only the start of the last user
turn's text, so the chat markup and any system turn survive and the cut prompt is still a conversation.
"""

from __future__ import annotations

from .data.loaders import messages


def chat_text(tokenizer, prompt) -> str:
    """A prompt (text or messages) as the model's chat text, ending where the assistant's turn begins."""
    return tokenizer.apply_chat_template(messages(prompt), add_generation_prompt=True, tokenize=False)


def prompt_length(tokenizer, prompt) -> int:
    """Tokens of the chat-formatted prompt (the template writes any BOS; none is added twice)."""
    return len(tokenizer(chat_text(tokenizer, prompt), add_special_tokens=False)["input_ids"])


def truncate_prompts(records: list[dict], tokenizer, max_tokens: int | None) -> tuple[list[dict], int]:
    """(records with every prompt at most `max_tokens` chat-formatted tokens, how many were cut)."""
    if max_tokens is None:
        return records, 0
    out, cut = [], 0
    for record in records:
        prompt = _truncate(tokenizer, record["prompt"], max_tokens, record.get("id"))
        cut += prompt is not record["prompt"]
        out.append(record if prompt is record["prompt"] else {**record, "prompt": prompt})
    return out, cut


def _truncate(tokenizer, prompt, max_tokens: int, record_id):
    excess = prompt_length(tokenizer, prompt) - max_tokens
    if excess <= 0:
        return prompt
    turns = messages(prompt)
    last_user = max(i for i, m in enumerate(turns) if m["role"] == "user")
    ids = tokenizer(turns[last_user]["content"], add_special_tokens=False)["input_ids"]
    # Re-tokenising the cut text can merge tokens differently at the new edge: cut again until it fits.
    for _ in range(4):
        if excess >= len(ids):
            raise ValueError(f"prompt of record {record_id!r}: max_prompt_length {max_tokens} leaves no room "
                             f"for its user text ({excess} tokens over with the text cut to nothing)")
        ids = ids[excess:]
        turns[last_user] = {**turns[last_user], "content": tokenizer.decode(ids)}
        candidate = turns if isinstance(prompt, list) else turns[last_user]["content"]
        excess = prompt_length(tokenizer, candidate) - max_tokens
        if excess <= 0:
            return candidate
    raise ValueError(f"prompt of record {record_id!r}: could not cut it to {max_tokens} tokens")

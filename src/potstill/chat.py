"""Prompt formatting shared by generation, training and evaluation (one format everywhere)."""

from __future__ import annotations


def encode_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Prompt ids: the chat template with the generation prompt, or the joined contents.

    Without a chat template the message contents are joined with blank lines and a final newline,
    tokenized with the tokenizer's own special tokens (e.g. BOS). Generation and evaluation should
    format prompts with this same function so the student sees what it was trained on.
    """
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # older/newer return types
            ids = ids["input_ids"]
        return list(ids)
    text = "\n\n".join(str(m.get("content", "")) for m in messages) + "\n"
    return list(tokenizer(text).input_ids)

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


def encode_response(tokenizer, pair: dict, reuse_teacher_ids: bool) -> list[int]:
    """Response ids: the teacher's own ids when the tokenizers match, else ``response_text`` re-tokenized.

    Re-tokenized answers get the student's EOS appended unless the teacher was cut off
    (``finish_reason == "length"``), so the student learns to stop where the teacher stopped.
    """
    if reuse_teacher_ids and pair.get("response_token_ids") is not None:
        return [int(i) for i in pair["response_token_ids"]]
    ids = list(tokenizer(pair.get("response_text") or "", add_special_tokens=False).input_ids)
    if pair.get("finish_reason", "stop") != "length" and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids


def pair_ids(tokenizer, pair: dict, reuse_teacher_ids: bool = True) -> tuple[list[int], list[int]]:
    """The full (untruncated) prompt ids and response ids of a pair, as training sees them.

    An empty prompt becomes one BOS (or EOS) token. The signal capture uses the same ids, and a
    store's :func:`~potstill.signals.store.sequence_hash` is checked against them.
    """
    prompt = encode_prompt(tokenizer, pair.get("messages") or [])
    resp = encode_response(tokenizer, pair, reuse_teacher_ids)
    if not prompt:
        prompt = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    return prompt, resp

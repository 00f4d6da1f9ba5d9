"""Local Hugging Face causal LMs as teachers (and as students at evaluation time).

Batched generation with left padding and the KV cache; prompts are sorted by length so that a
batch wastes little padding. Chat templates are applied when the tokenizer has one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ..chat import encode_prompt
from ..errors import UserError
from ..models import count_params, default_device, load_model, load_tokenizer, model_path
from .base import GenerationSettings


class LocalGenerator:
    """Generates answers from a local model directory or ``.gguf`` file (or an already loaded model)."""

    def __init__(
        self,
        path: str | Path,
        dtype: str = "float32",
        init: str = "pretrained",
        seed: int = 0,
        device: str | None = None,
        model=None,
        tokenizer=None,
    ):
        self.path = model_path(path)  # a .gguf file: its converted directory
        self.device = device or default_device()
        self.tokenizer = tokenizer or load_tokenizer(self.path, padding_side="left")
        self.model = model if model is not None else load_model(self.path, dtype=dtype, init=init, seed=seed)
        self.model.to(self.device).eval()
        self.params = count_params(self.model)
        self.context = getattr(self.model.config, "max_position_embeddings", None)  # None: not stated
        self.eos_ids = self._eos_ids()
        # Embedding rows past the tokenizer (padded to a multiple of 64, ...) are not tokens: never emitted.
        self.vocab = len(self.tokenizer)
        head = self.model.get_output_embeddings()
        self.padding_ids = list(range(self.vocab, head.weight.shape[0] if head is not None else self.vocab))

    def _eos_ids(self) -> set[int]:
        ids = set()
        gc_eos = getattr(self.model.generation_config, "eos_token_id", None)
        for e in gc_eos if isinstance(gc_eos, list) else [gc_eos]:
            if e is not None:
                ids.add(int(e))
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return ids

    @torch.inference_mode()
    def generate_batch(self, prompts: list[list[int]], settings: GenerationSettings) -> list[dict]:
        """Generate for one batch of tokenized prompts; returns partial records (no id)."""
        pad = self.tokenizer.pad_token_id
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            input_ids[i, width - len(p) :] = torch.tensor(p)
            attention[i, width - len(p) :] = 1
        kwargs = dict(
            max_new_tokens=settings.max_new_tokens,
            do_sample=settings.do_sample,
            pad_token_id=pad,
            eos_token_id=sorted(self.eos_ids),
            return_dict_in_generate=True,
            output_logits=settings.top_logprobs > 0,
        )
        if self.padding_ids:
            kwargs["suppress_tokens"] = self.padding_ids
        if settings.do_sample:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        out = self.model.generate(
            input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device), **kwargs
        )
        new = out.sequences[:, width:].cpu()
        top = None
        if settings.top_logprobs > 0:
            logits = torch.stack(out.logits, dim=1).float()[..., : self.vocab]  # [batch, new, vocab]: real tokens only
            lp = torch.log_softmax(logits, dim=-1)
            vals, idx = lp.topk(min(settings.top_logprobs, lp.shape[-1]), dim=-1)
            top = (idx.cpu(), vals.cpu())
        records = []
        for i in range(len(prompts)):
            ids = new[i].tolist()
            finish = "length"
            for j, t in enumerate(ids):
                if t in self.eos_ids:
                    ids, finish = ids[: j + 1], "stop"
                    break
            text_ids = ids[:-1] if finish == "stop" else ids
            rec = {
                "text": self.tokenizer.decode(text_ids, skip_special_tokens=True).strip(),
                "token_ids": ids,
                "finish_reason": finish,
                "usage": {"prompt_tokens": len(prompts[i]), "completion_tokens": len(ids)},
                "top_logprobs": None,
            }
            if top is not None:
                n = len(ids)
                rec["top_logprobs"] = [
                    [[int(t), round(float(v), 6)] for t, v in zip(top[0][i, j].tolist(), top[1][i, j].tolist())]
                    for j in range(n)
                ]
            records.append(rec)
        return records

    def generate(
        self,
        records: list[dict],
        settings: GenerationSettings,
        on_batch: Callable[[list[dict]], None] | None = None,
        check_context: bool = False,
    ) -> Iterator[dict]:
        """Yield one generation record per prompt record, in batches sorted by prompt length.

        ``check_context``: before anything is generated, a prompt that leaves no room for
        ``max_new_tokens`` in the model's context is a one-line :class:`UserError` naming it (the
        teacher's generate stage: the prompts stage should have dropped it).
        """
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        encoded = [(r, encode_prompt(self.tokenizer, r["messages"])) for r in records]
        encoded.sort(key=lambda x: len(x[1]))
        if check_context:
            lengths = [(r["id"], len(p)) for r, p in encoded]
            check_context_fits(lengths, settings.max_new_tokens, self.context, self.path)
        for start in range(0, len(encoded), settings.batch_size):
            chunk = encoded[start : start + settings.batch_size]
            outs = self.generate_batch([p for _, p in chunk], settings)
            batch = [{"id": r["id"], **o} for (r, _), o in zip(chunk, outs)]
            if on_batch:
                on_batch(batch)
            yield from batch


def check_context_fits(lengths: list[tuple[str, int]], max_new_tokens: int, context: int | None, model: Path) -> None:
    """A one-line :class:`UserError` naming the longest prompt when some ``(id, prompt tokens)`` leave
    no room for ``max_new_tokens`` in ``context`` (None: not known, nothing checked)."""
    if not context:
        return
    over = [(n, rid) for rid, n in lengths if n + max_new_tokens > context]
    if over:
        n, rid = max(over)
        raise UserError(
            f"{len(over)} prompt(s) too long for the teacher: the longest, {rid!r}, has {n:,} tokens, and "
            f"with teacher.max_new_tokens {max_new_tokens} the context is {context:,}; rerun the prompts "
            "stage (--force prompts) to drop them, or set prompts.max_prompt_tokens",
            str(model),
        )

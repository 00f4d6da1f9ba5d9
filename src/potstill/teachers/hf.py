"""Local Hugging Face causal LMs as teachers (and as students at evaluation time).

Batched generation with left padding and the KV cache; prompts are sorted by length so that a
batch wastes little padding. Chat templates are applied when the tokenizer has one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..models import count_params, default_device, load_model, load_tokenizer, model_path
from .base import GenerationSettings, PromptGenerator, eos_set, make_record


class LocalGenerator(PromptGenerator):
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
        return eos_set(getattr(self.model.generation_config, "eos_token_id", None), self.tokenizer)

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
        tops = [None] * len(prompts)
        if settings.top_logprobs > 0:
            logits = torch.stack(out.logits, dim=1).float()[..., : self.vocab]  # [batch, new, vocab]: real tokens only
            tops = topk_rows(logits, settings.top_logprobs)
        return [
            make_record(self.tokenizer, len(p), new[i].tolist(), self.eos_ids, tops[i]) for i, p in enumerate(prompts)
        ]


def topk_rows(logits: torch.Tensor, k: int) -> list[list[list[tuple[int, float]]]]:
    """``[batch][step] -> [(token_id, logprob), ...]``: the ``k`` most likely tokens of the
    log-softmax of ``logits`` ``[batch, steps, vocab]`` (untempered), most likely first."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    vals, idx = lp.topk(min(k, lp.shape[-1]), dim=-1)
    vals, idx = vals.cpu().tolist(), idx.cpu().tolist()
    return [[list(zip(i_row, v_row)) for i_row, v_row in zip(idx[b], vals[b])] for b in range(len(idx))]

"""Tokenizer preflight: can the teacher's logits be matched to the student's token by token?

:func:`compare_tokenizers` classifies a teacher/student pair of model (or tokenizer-only) directories:

* ``same``: the token→id maps are identical (every token, added and special ones included) and
  the two embeddings have the same number of rows. Token-level KD lines up one to one.
* ``padded``: the same token→id map, but the embedding matrices have different row counts (one
  side padded beyond ``len(tokenizer)``, e.g. to a multiple of 64 or 128). KD then compares the
  first ``usable_vocab`` logits of both (the rows past the tokenizer are never real tokens).
* ``different``: the maps differ: another tokenizer family, a strict subset/superset (an extra
  added token), or the same tokens under permuted ids. Token-level KD is meaningless here.

A different chat template, special-token choice (bos/eos/pad) or text segmentation (merges,
normalizer) with the same token→id map does not change the kind; it is a *note*. Embedding rows
are read from ``config.json`` (``vocab_size``); a tokenizer-only directory (an API teacher's
``teacher.tokenizer``) has ``rows=None``.

:func:`kd_path` turns a :class:`VocabMatch` into what the ``kd`` method trains:

* ``kd``: token-level KD (``same`` / ``padded``: logits truncated to ``usable_vocab``);
* ``sft``: tokenizers differ and ``train.kd.cross_tokenizer: sft``: text-level distillation,
  the kd student is trained on the teacher's answers by cross-entropy only;
* ``uld``: tokenizers differ and ``train.kd.cross_tokenizer: uld``: Universal Logit Distillation
  (:mod:`potstill.losses.uld`) with the live teacher.

Token-level teacher signals (``topk`` log-probs, signal stores) with different tokenizers, and an
embedding smaller than its tokenizer, are one-line :class:`~potstill.errors.UserError`\\ s.
``potstill check TEACHER STUDENT`` prints the verdict; ``potstill run`` prints the path kd takes.

>>> m = compare_tokenizers("teacher_dir", "student_dir")   # doctest: +SKIP
>>> m.kind, kd_path(m, cfg.train.kd)                        # doctest: +SKIP
('padded', ('kd', 'kd: teacher and student share a tokenizer (padded embeddings: logits truncated to 32000)'))
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from .errors import UserError
from .models import load_tokenizer, model_path, tokenizer_fingerprint

Kind = Literal["same", "padded", "different"]
SPECIAL = ("bos_token", "eos_token", "pad_token", "unk_token")
# Text that exercises merges, digits, whitespace runs, unicode and the chat markers' neighbours.
PROBE = [
    "The quick brown fox jumps over the lazy dog. 1234567890 + 0.5 = ?",
    "What is that? A cat sat on the mat; the water was great, and then they ate it all.",
    "  leading spaces,\ttabs\nand new lines\n\n",
    "Ünïcödé: naïve café, 東京, emoji 🙂, dash — done.",
    "def f(x):\n    return x ** 2  # code",
]
_EXAMPLES = 3


@dataclass
class VocabMatch:
    """How a teacher's and a student's tokenizers relate (see the module docstring)."""

    kind: Kind
    teacher: str  # the directories compared
    student: str
    teacher_fingerprint: str  # potstill.models.tokenizer_fingerprint (vocab, specials, chat template)
    student_fingerprint: str
    vocab_equal: bool  # identical token -> id maps, added and special tokens included
    teacher_vocab: int  # len(tokenizer)
    student_vocab: int
    teacher_rows: int | None  # embedding rows (config.json vocab_size); None: tokenizer-only dir
    student_rows: int | None
    usable_vocab: int | None  # ids both sides can score: min(lens, known rows); None if the vocabs differ
    special_tokens_equal: bool  # bos/eos/pad/unk strings and ids
    chat_template_equal: bool
    encoding_equal: bool  # a probe text is split into the same ids
    vocab_diff: dict = field(default_factory=dict)  # counts and examples: only_teacher, only_student, moved
    reasons: list[str] = field(default_factory=list)  # why this kind
    notes: list[str] = field(default_factory=list)  # what does not change the kind but matters

    def to_dict(self) -> dict:
        return asdict(self)


def embedding_rows(model_dir: str | Path) -> int | None:
    """``vocab_size`` from ``config.json`` (top level, or a multimodal model's text config); None without one."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    try:
        conf = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"config.json is malformed ({type(e).__name__})", str(model_dir)) from None
    for c in (conf, conf.get("text_config"), conf.get("llm_config"), conf.get("language_config")):
        if isinstance(c, dict) and isinstance(c.get("vocab_size"), int):
            return c["vocab_size"]
    return None


def _specials(tok) -> dict[str, tuple[str | None, int | None]]:
    return {k: (None if getattr(tok, k) is None else str(getattr(tok, k)), getattr(tok, k + "_id")) for k in SPECIAL}


def _show(tokens: list[tuple[str, int]]) -> str:
    return ", ".join(f"{t!r}={i}" for t, i in tokens[:_EXAMPLES]) + (", ..." if len(tokens) > _EXAMPLES else "")


def _vocab_diff(tv: dict[str, int], sv: dict[str, int]) -> tuple[dict, tuple[list, list, list]]:
    """Counts and a few examples of tokens only on one side, and of shared tokens under other ids."""
    only_t = sorted(((k, v) for k, v in tv.items() if k not in sv), key=lambda kv: kv[1])
    only_s = sorted(((k, v) for k, v in sv.items() if k not in tv), key=lambda kv: kv[1])
    moved = sorted(((k, tv[k], sv[k]) for k in tv.keys() & sv.keys() if tv[k] != sv[k]), key=lambda x: x[1])
    summary = {
        "only_teacher": len(only_t),
        "only_student": len(only_s),
        "moved": len(moved),
        "examples": {
            "only_teacher": [list(x) for x in only_t[:_EXAMPLES]],
            "only_student": [list(x) for x in only_s[:_EXAMPLES]],
            "moved": [list(x) for x in moved[:_EXAMPLES]],
        },
    }
    return summary, (only_t, only_s, moved)


def compare_tokenizers(
    teacher_dir: str | Path, student_dir: str | Path, *, teacher_tok=None, student_tok=None
) -> VocabMatch:
    """Classify the teacher/student tokenizer pair (``same`` / ``padded`` / ``different``) with the facts.

    ``teacher_tok`` / ``student_tok``: already loaded tokenizers of those directories (saves a load).
    Bad directories are one-line UserErrors (from :func:`potstill.models.load_tokenizer`).
    """
    t_dir, s_dir = model_path(teacher_dir), model_path(student_dir)  # a .gguf file: its converted directory
    t_tok = teacher_tok if teacher_tok is not None else load_tokenizer(t_dir)
    s_tok = student_tok if student_tok is not None else load_tokenizer(s_dir)
    t_rows, s_rows = embedding_rows(t_dir), embedding_rows(s_dir)
    tv, sv = t_tok.get_vocab(), s_tok.get_vocab()
    t_len, s_len = len(t_tok), len(s_tok)
    vocab_equal = tv == sv and t_len == s_len
    t_sp, s_sp = _specials(t_tok), _specials(s_tok)
    special_equal = t_sp == s_sp
    template_equal = t_tok.chat_template == s_tok.chat_template
    encoding_equal = all(
        t_tok(x, add_special_tokens=False).input_ids == s_tok(x, add_special_tokens=False).input_ids for x in PROBE
    )
    reasons, notes = [], []
    diff: dict = {}

    if not vocab_equal:
        kind: Kind = "different"
        diff, (only_t, only_s, moved) = _vocab_diff(tv, sv)
        if len(tv) != len(sv):
            reasons.append(f"vocabulary sizes differ: teacher {len(tv)}, student {len(sv)} tokens")
        if only_t:
            reasons.append(f"{len(only_t)} token(s) only in the teacher's vocabulary ({_show(only_t)})")
        if only_s:
            reasons.append(f"{len(only_s)} token(s) only in the student's vocabulary ({_show(only_s)})")
        if moved:
            shown = ", ".join(f"{k!r}: {a} vs {b}" for k, a, b in moved[:_EXAMPLES])
            shown += ", ..." if len(moved) > _EXAMPLES else ""
            reasons.append(f"{len(moved)} shared token(s) have different ids ({shown})")
        if not reasons:  # same dict, different len(): a tokenizer that counts tokens outside get_vocab()
            reasons.append(f"tokenizer lengths differ: teacher {t_len}, student {s_len}")
        usable = None
    else:
        known = [r for r in (t_rows, s_rows) if r is not None]
        usable = min([t_len, *known])
        if t_rows is not None and s_rows is not None and t_rows != s_rows:
            kind = "padded"
            reasons.append(
                f"same token→id map ({t_len} tokens); embedding rows differ: teacher {t_rows}, "
                f"student {s_rows}: KD uses the first {usable} logits of both"
            )
        else:
            kind = "same"
            reasons.append(
                f"same token→id map ({t_len} tokens)"
                + (f" and embedding rows ({t_rows})" if t_rows is not None and s_rows is not None else "")
            )
            if t_rows is not None and t_rows > t_len:
                notes.append(
                    f"both embeddings have {t_rows} rows for a {t_len}-token vocabulary: KD uses the first {usable}"
                )
        for name, rows, d in (("teacher", t_rows, t_dir), ("student", s_rows, s_dir)):
            if rows is None:
                notes.append(
                    f"the {name} directory has no config.json (tokenizer only): its embedding rows are unknown"
                )
            elif rows < t_len:
                notes.append(
                    f"the {name}'s embedding has {rows} rows for a {t_len}-token vocabulary: ids >= {rows} "
                    f"cannot be fed to it ({d})"
                )
        if not encoding_equal:
            notes.append(
                "the same vocabulary splits text differently (merges, normalizer or pre-tokenizer differ): "
                "KD lines up the ids, but the teacher scores text tokenized the student's way"
            )

    if not special_equal:
        what = "; ".join(
            f"{k.removesuffix('_token')} {t_sp[k][0]!r}={t_sp[k][1]} vs {s_sp[k][0]!r}={s_sp[k][1]}"
            for k in SPECIAL
            if t_sp[k] != s_sp[k]
        )
        notes.append(
            f"special tokens differ (teacher vs student): {what}; answers are re-tokenized and end with the "
            "student's eos"
        )
    if not template_equal:
        notes.append(
            "chat templates differ: training prompts are encoded with the student's template (the teacher "
            "answered prompts in its own)"
        )

    return VocabMatch(
        kind=kind,
        teacher=str(Path(teacher_dir)),
        student=str(Path(student_dir)),
        teacher_fingerprint=tokenizer_fingerprint(t_tok),
        student_fingerprint=tokenizer_fingerprint(s_tok),
        vocab_equal=vocab_equal,
        teacher_vocab=t_len,
        student_vocab=s_len,
        teacher_rows=t_rows,
        student_rows=s_rows,
        usable_vocab=usable,
        special_tokens_equal=special_equal,
        chat_template_equal=template_equal,
        encoding_equal=encoding_equal,
        vocab_diff=diff,
        reasons=reasons,
        notes=notes,
    )


KD_SHARED = "kd: teacher and student share a tokenizer"
KD_SFT = (
    "kd: tokenizers differ → text-level distillation (SFT on the teacher's answers); "
    "set train.kd.cross_tokenizer=uld for Universal Logit Distillation"
)
KD_ULD = "kd: tokenizers differ → ULD (Universal Logit Distillation over the two vocabularies, live teacher)"


def kd_path(match: VocabMatch, kd) -> tuple[Literal["kd", "sft", "uld"], str]:
    """What the ``kd`` method trains for this pair, and the one line that says so.

    ``kd``: the run's ``train.kd`` settings (anything with ``signal`` and ``cross_tokenizer``).
    Returns ``("kd" | "sft" | "uld", message)``; UserError where kd cannot run: a token-level
    teacher signal (``topk``, ``store``) or on-policy KD (``on_policy_ratio > 0``) with different
    tokenizers, or an embedding with fewer rows than the shared tokenizer has tokens.
    """
    if match.kind == "different":
        if kd.signal != "live":
            raise UserError(
                f"signal '{kd.signal}' is token-level (teacher token ids) and needs the teacher and student to share "
                f"a tokenizer, but {match.teacher} and {match.student} differ ({'; '.join(match.reasons)}); use "
                "signal 'live' (kd then trains text-level, or with train.kd.cross_tokenizer=uld) or method 'sft'",
                where="train.kd.signal",
            )
        if getattr(kd, "on_policy_ratio", 0) > 0:
            raise UserError(
                f"on_policy_ratio > 0 (GKD) needs the teacher and student to share a tokenizer (the teacher scores the "
                f"student's own tokens), but {match.teacher} and {match.student} differ ({'; '.join(match.reasons)}); "
                "set it to 0",
                where="train.kd.on_policy_ratio",
            )
        if kd.cross_tokenizer == "uld":
            return "uld", KD_ULD
        return "sft", KD_SFT
    for name, rows, d in (
        ("teacher", match.teacher_rows, match.teacher),
        ("student", match.student_rows, match.student),
    ):
        if rows is not None and rows < match.teacher_vocab:
            raise UserError(
                f"kd: the {name}'s embedding has {rows} rows for a {match.teacher_vocab}-token "
                f"vocabulary (resize its embeddings to the tokenizer)",
                d,
            )
    if match.kind == "padded":
        return "kd", f"{KD_SHARED} (padded embeddings: logits truncated to {match.usable_vocab})"
    return "kd", KD_SHARED

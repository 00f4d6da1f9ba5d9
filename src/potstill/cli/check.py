"""``potstill check TEACHER STUDENT``: the tokenizer preflight, and the path ``kd`` would take.

Prints the verdict of :func:`potstill.vocab.compare_tokenizers` (``same``, ``padded`` or
``different``), the facts behind it and what ``potstill run`` does for the ``kd`` method under
both ``train.kd.cross_tokenizer`` settings; ``--json`` prints the :class:`~potstill.vocab.VocabMatch`.
Exit 0 whatever the verdict; a directory that holds no tokenizer is a one-line error (exit 2).
"""

from __future__ import annotations

import json
import textwrap

from ..config import KDSettings
from ..errors import UserError
from ..vocab import compare_tokenizers, kd_path

HELP = "check whether a teacher and a student share a tokenizer (same, padded, different) and what kd would do"
DESCRIPTION = HELP + (
    ". TEACHER and STUDENT are local model directories (or tokenizer-only directories, e.g. an API teacher's "
    "teacher.tokenizer). same: identical token→id maps and embedding rows, token-level KD; padded: identical maps, "
    "embedding rows differ (padded to a multiple of 64/128), KD on the first len(tokenizer) logits; different: the "
    "maps differ, kd trains text-level (train.kd.cross_tokenizer=sft: cross-entropy on the teacher's answers) or "
    "with Universal Logit Distillation (cross_tokenizer=uld)."
)


def add_parser(sub) -> None:
    p = sub.add_parser("check", help=HELP, description=DESCRIPTION)
    p.add_argument("teacher", help="the teacher's model (or tokenizer) directory")
    p.add_argument("student", help="the student's model directory")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(func=main)


def _wrap(label: str, text: str) -> list[str]:
    return textwrap.wrap(
        " ".join(str(text).split()),
        width=100,
        break_on_hyphens=False,
        break_long_words=False,
        initial_indent=f"{label:<14}",
        subsequent_indent=" " * 14,
    )


def _rows(rows: int | None, n: int) -> str:
    if rows is None:
        return "rows unknown (no config.json)"
    return f"{rows} rows" + ("" if rows == n else f" (+{rows - n} padding)" if rows > n else f" ({n - rows} short!)")


def _kd_line(match, cross_tokenizer: str) -> str:
    """What ``potstill run`` does for kd with this ``train.kd.cross_tokenizer`` (and signal live)."""

    try:
        path, message = kd_path(match, KDSettings(signal="live", cross_tokenizer=cross_tokenizer))
    except UserError as e:
        return f"the run stops: {e}"
    return f"{path}: {message.removeprefix('kd: ')}"


def main(args) -> int:

    m = compare_tokenizers(args.teacher, args.student)
    if args.json:
        print(json.dumps(m.to_dict(), indent=2, ensure_ascii=False))
        return 0
    yes = {True: "equal", False: "differ"}
    out = _wrap("verdict", f"{m.kind}: " + "; ".join(m.reasons))
    out += _wrap("teacher", m.teacher)
    out += _wrap("student", m.student)
    out += _wrap(
        "vocab",
        f"teacher {m.teacher_vocab} tokens, student {m.student_vocab} tokens; token→id maps {yes[m.vocab_equal]}",
    )
    out += _wrap(
        "embeddings",
        f"teacher {_rows(m.teacher_rows, m.teacher_vocab)}, student {_rows(m.student_rows, m.student_vocab)}",
    )
    out += _wrap(
        "usable vocab", m.usable_vocab if m.usable_vocab is not None else "none shared (different vocabularies)"
    )
    out += _wrap("specials", f"bos/eos/pad/unk {yes[m.special_tokens_equal]}")
    out += _wrap("chat template", yes[m.chat_template_equal])
    out += _wrap("encoding", f"probe text {'split the same' if m.encoding_equal else 'split differently'}")
    out += _wrap(
        "fingerprints",
        f"teacher {m.teacher_fingerprint[:16]}, student {m.student_fingerprint[:16]}"
        + (" (equal)" if m.teacher_fingerprint == m.student_fingerprint else ""),
    )
    for note in m.notes:
        out += _wrap("note", note)
    if m.kind == "different":
        out += _wrap("run: kd", "with train.kd.cross_tokenizer=sft (the default) → " + _kd_line(m, "sft"))
        out += _wrap("run: kd", "with train.kd.cross_tokenizer=uld → " + _kd_line(m, "uld"))
    else:
        out += _wrap("run: kd", _kd_line(m, "sft") + " (either train.kd.cross_tokenizer setting)")
    print("\n".join(out))
    return 0

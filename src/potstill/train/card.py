"""The model card (README.md) written next to each distilled student.

:func:`write_model_card` writes the card at export time; later stages (evaluation, report) add
their tables with :func:`append_card_section`, which replaces a section of the same title so
re-running a stage does not duplicate it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..io import write_text

METHOD_TEXT = {
    "sft": "hard-label SFT: cross-entropy on the teacher's answers (text-level distillation)",
    "kd": "soft-label KD: alpha * T^2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * cross-entropy",
}


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def _table(rows: list[tuple[str, object]]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in rows if v is not None]
    return "\n".join(lines)


def render_model_card(method: str, cfg, metrics: dict, provenance: dict | None = None) -> str:
    """The card's markdown: model details, how it was distilled, data and provenance."""
    t, prov = cfg.train, provenance or {}
    details = [
        ("Student (base)", cfg.student.model),
        ("Initialisation", cfg.student.init),
        ("Parameters", metrics.get("params")),
        ("Dtype", cfg.student.dtype),
        ("LoRA", f"r={t.lora.r}, alpha={t.lora.alpha}, merged into the weights" if t.lora.enabled else "no (full fine-tune)"),
    ]
    hp = [
        ("Teacher", cfg.teacher.model),
        ("Method", f"`{method}`: {METHOD_TEXT.get(method, method)}"),
        ("Epochs", t.epochs),
        ("Learning rate", t.lr),
        ("Batch size x grad accum", f"{t.batch_size} x {t.grad_accum}"),
        ("Max sequence length", t.max_seq_len),
        ("Scheduler / warmup ratio", f"{t.lr_scheduler} / {t.warmup_ratio}"),
        ("Weight decay", t.weight_decay),
        ("Seed", cfg.seed),
    ]
    if method == "kd":
        hp += [("KD temperature T", t.kd.temperature), ("KD alpha", t.kd.alpha), ("KD signal", t.kd.signal)]
    hp += [
        ("Optimizer steps", metrics.get("steps")),
        ("Final train loss", metrics.get("train_loss")),
        ("Runtime (s)", metrics.get("runtime_s")),
    ]
    hp += [(f"Final {k}", v) for k, v in (metrics.get("final_parts") or {}).items()]
    data = [
        ("Training pairs", metrics.get("pairs")),
        ("Response tokens", metrics.get("response_tokens")),
        ("Response ids", metrics.get("response_ids")),
    ]
    data += [(k, f"`{v}`") for k, v in prov.items() if isinstance(v, str) and re.search(r"sha|hash|digest", k, re.I)]
    return "\n".join(
        [
            "---",
            "library_name: transformers",
            "tags: [potstill, distillation, " + method + "]",
            "---",
            "",
            f"# {cfg.name}: {method} student",
            "",
            f"Distilled by potstill from `{cfg.teacher.model}` into `{cfg.student.model}`.",
            "",
            "## Model details",
            "",
            _table(details),
            "",
            "## How it was distilled",
            "",
            _table(hp),
            "",
            "## Data",
            "",
            _table(data),
            "",
            "## Provenance",
            "",
            "```json",
            json.dumps(prov, indent=2, sort_keys=True, default=str),
            "```",
            "",
        ]
    )


def write_model_card(out_dir: str | Path, method: str, cfg, metrics: dict, provenance: dict | None = None) -> Path:
    """Write ``out_dir/README.md`` (see :func:`render_model_card`); returns its path."""
    path = Path(out_dir) / "README.md"
    write_text(path, render_model_card(method, cfg, metrics, provenance))
    return path


def append_card_section(model_dir: str | Path, title: str, markdown: str) -> Path:
    """Add (or replace) a ``## title`` section at the end of ``model_dir/README.md``.

    A section runs until the next ``## `` heading; an existing one with the same title is removed
    first, so calling this again (e.g. a re-run evaluation) updates the section in place.
    """
    path = Path(model_dir) / "README.md"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    heading = f"## {title.strip()}"
    lines, kept, skipping = text.splitlines(), [], False
    for line in lines:
        if line.startswith("## "):
            skipping = line.strip() == heading
        if not skipping:
            kept.append(line)
    body = "\n".join(kept).rstrip("\n")
    write_text(path, (body + "\n\n" if body else "") + f"{heading}\n\n{markdown.strip()}\n")
    return path

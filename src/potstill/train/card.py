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
from ..teachers.spec import teacher_spec

METHOD_TEXT = {
    "sft": "hard-label SFT: cross-entropy on the teacher's answers (text-level distillation)",
    "kd": "soft-label KD: alpha * T^2 * D(p_teacher^T, p_student^T) + (1 - alpha) * cross-entropy",
    "kd/sft": "kd with a teacher of another tokenizer, trained text-level: cross-entropy on the teacher's answers",
    "kd/uld": "kd across tokenizers: alpha * ULD (L1 between sorted teacher and student probabilities, "
    "Boizard et al. 2024) + (1 - alpha) * cross-entropy",
}


def _variant(method: str, metrics: dict) -> str:
    """``kd``, or ``kd/sft`` / ``kd/uld`` when the kd student's teacher had another tokenizer."""
    path = metrics.get("kd_path")
    return f"kd/{path}" if method == "kd" and path in ("sft", "uld") else method


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


VERDICT_TEXT = {
    "allowed": "allowed",
    "allowed_with_obligations": "allowed with obligations",
    "accepted": "forbidden by the terms, proceeded under a recorded acceptance",
    "blocked": "blocked",
    "unknown": "unknown (not in potstill's terms registry)",
}


def render_terms_section(terms: dict | None, name: str) -> str:
    """The "Teacher terms and obligations" section from ``provenance["terms"]`` (see
    :func:`potstill.terms.gate.Decision.to_dict`): the matched terms, the verdict, and the
    obligations that come with this student, stated plainly (e.g. its required name prefix)."""
    if not terms:
        return (
            "The teacher's terms were not recorded for this student: check the teacher's license before using or "
            "distributing it."
        )
    teacher, entry = terms.get("teacher"), terms.get("entry")
    lines = []
    if not entry:
        tried = ", ".join(terms.get("tried") or []) or "nothing"
        lines += [
            f"The teacher `{teacher}` matches no entry of potstill's terms registry (version "
            f"{terms.get('registry_version')}; tried: {tried}). Its terms were not checked: read the teacher's "
            "license before using or distributing this student.",
            "",
        ]
    else:
        lines += [
            f"The teacher `{teacher}` is under the **{entry['license']}** (potstill terms registry "
            f"{terms.get('registry_version')}, entry `{entry['id']}`, matched by {terms.get('matched_by')}; "
            f"checked {entry['checked']}; source: {entry['source_url']}).",
            "",
        ]
    use = f"use: {terms.get('use')}, {'commercial' if terms.get('commercial') else 'non-commercial'}"
    lines += [f"Verdict: **{VERDICT_TEXT.get(terms.get('verdict'), terms.get('verdict'))}** ({use}).", ""]
    for r in terms.get("reasons") or []:
        lines.append(f"- Restriction: {r}.")
    acc = terms.get("acceptance")
    if acc:
        lines += [f"- Acceptance recorded by {acc.get('who')} on {acc.get('date')}: {acc.get('why')}"]
    if terms.get("reasons") or acc:
        lines.append("")
    prefix, attribution = terms.get("name_prefix"), terms.get("attribution")
    obligations = terms.get("obligations") or []
    if prefix or attribution or obligations:
        lines += ["Obligations that come with this student:", ""]
        if prefix:
            ok = str(name).lower().startswith(prefix.lower())
            lines.append(
                f'- **Its name must start with "{prefix}"** when it is distributed or made available'
                + ("." if ok else f" (`{name}` does not: rename it first, e.g. `{prefix}-{name}`).")
            )
        if attribution:
            lines.append(
                f'- **Display "{attribution}"** (the attribution the terms require; see the obligations below).'
            )
        lines += [f"- {o}" for o in obligations]
        lines.append("")
    elif entry:
        lines += ["The terms attach no obligations to a model trained on the teacher's outputs.", ""]
    if entry:
        clause = " ".join(str(entry.get("clause", "")).split())
        lines += [f'The clause: "{clause}"', ""]
        if entry.get("notes"):
            lines += [f"Notes: {' '.join(str(entry['notes']).split())}", ""]
        if entry.get("verification") == "recalled":
            lines += [
                "(The registry entry was written from the published text without re-fetching it; verify the "
                "wording at the source before relying on it.)",
                "",
            ]
    for w in terms.get("warnings") or []:
        lines.append(f"- Warning: {w}")
    return "\n".join(lines).rstrip() + "\n"


def render_model_card(method: str, cfg, metrics: dict, provenance: dict | None = None) -> str:
    """The card's markdown: model details, how it was distilled, data and provenance."""
    t, prov = cfg.train, provenance or {}
    teacher = prov.get("teacher") or teacher_spec(cfg.teacher, cfg.resolve).display
    details = [
        ("Student (base)", cfg.student.model),
        ("Initialisation", cfg.student.init),
        ("Parameters", metrics.get("params")),
        ("Dtype", cfg.student.dtype),
        (
            "LoRA",
            f"r={t.lora.r}, alpha={t.lora.alpha}, merged into the weights" if t.lora.enabled else "no (full fine-tune)",
        ),
    ]
    hp = [
        ("Teacher", teacher),
        ("Method", f"`{method}`: {METHOD_TEXT.get(_variant(method, metrics), method)}"),
        ("Epochs", t.epochs),
        ("Learning rate", t.lr),
        ("Batch size x grad accum", f"{t.batch_size} x {t.grad_accum}"),
        ("Max sequence length", t.max_seq_len),
        ("Scheduler / warmup ratio", f"{t.lr_scheduler} / {t.warmup_ratio}"),
        ("Weight decay", t.weight_decay),
        ("Seed", cfg.seed),
    ]
    if _variant(method, metrics) == "kd":
        hp += [
            ("KD temperature T", t.kd.temperature),
            ("KD alpha", t.kd.alpha),
            ("KD signal", t.kd.signal),
            ("KD divergence", t.kd.divergence),
        ]
        if t.kd.on_policy_ratio > 0:
            hp += [
                ("On-policy ratio (GKD)", t.kd.on_policy_ratio),
                ("On-policy batches", metrics.get("on_policy_batches")),
            ]
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
            f"Distilled by potstill from `{teacher}` into `{cfg.student.model}`.",
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
            "## Teacher terms and obligations",
            "",
            render_terms_section(prov.get("terms"), cfg.name).rstrip(),
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

"""A distilled student written where people deploy it, with its model card and provenance.

* ``gguf``: one file that llama.cpp and Ollama load (:func:`potstill.export.gguf.export_gguf`); the model
  card goes into ``general.description``, the license into ``general.license``, and the provenance
  (teacher, its hash, the terms verdict) as JSON into ``potstill.provenance``.
* ``ct2``: a CTranslate2 directory (:func:`potstill.engines.ct2.convert`, float32 or int8 weights) with
  the tokenizer files, ``README.md`` (the model card) and ``potstill.json`` (the provenance).

Both are written atomically: a failure leaves nothing at the output path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import UserError
from ..models import check_model_dir

FORMATS = ("gguf", "ct2")
TYPES = {"gguf": ("f32", "f16", "q8_0", "q4_0"), "ct2": ("float32", "int8")}
DEFAULT_TYPE = {"gguf": "f16", "ct2": "float32"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def provenance(student_dir: Path) -> dict:
    """What the export says about where the student came from: ``training.json``'s provenance
    (teacher, hashes, terms), trimmed to the facts a user of the file needs."""
    path = Path(student_dir) / "training.json"
    if not path.is_file():
        return {"source": str(student_dir)}
    info = json.loads(path.read_text())
    prov = info.get("provenance") or {}
    terms = prov.get("terms") or {}
    entry = terms.get("entry") or {}
    return {
        "source": str(student_dir),
        "method": info.get("method"),
        "teacher": prov.get("teacher"),
        "teacher_hash": prov.get("teacher_hash"),
        "student_base": prov.get("student_base"),
        "generations_hash": prov.get("generations_hash"),
        "teacher_license": entry.get("license"),
        "teacher_outputs_may_train_models": entry.get("outputs_may_train_models"),
        "teacher_terms_entry": terms.get("entry_id"),
        "terms_registry_version": terms.get("registry_version"),
    }


def model_card(student_dir: Path) -> str:
    card = Path(student_dir) / "README.md"
    return card.read_text(encoding="utf-8") if card.is_file() else ""


def license_of(prov: dict) -> str | None:
    """The license the student's metadata states: the teacher's, as the terms registry names it."""
    return prov.get("teacher_license")


def export_student(student_dir: str | Path, out: str | Path, fmt: str, dtype: str | None = None) -> Path:
    """Write the student at ``student_dir`` as ``fmt`` (``gguf`` or ``ct2``) at ``out`` (a file for
    GGUF, a directory for CTranslate2); ``dtype`` one of :data:`TYPES` [fmt] (default
    :data:`DEFAULT_TYPE`). Returns ``out``."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r} (expected one of: {', '.join(FORMATS)})")
    dtype = dtype or DEFAULT_TYPE[fmt]
    if dtype not in TYPES[fmt]:
        raise UserError(f"--type {dtype} is not a {fmt} type (expected one of: {', '.join(TYPES[fmt])})")
    student_dir, out = check_model_dir(student_dir), Path(out)
    prov, card = provenance(student_dir), model_card(student_dir)
    if fmt == "gguf":
        from .gguf import export_gguf  # defers the gguf writer

        meta = {"general.description": card, "potstill.provenance": json.dumps(prov, sort_keys=True)}
        if license_of(prov):
            meta["general.license"] = license_of(prov)
        if prov.get("teacher"):
            meta["general.name"] = f"{Path(student_dir).name} (distilled from {Path(prov['teacher']).name})"
        return export_gguf(student_dir, out, dtype=dtype, metadata=meta)
    from ..engines.ct2 import convert  # defers ctranslate2

    def extra(tmp: Path) -> None:
        for name in TOKENIZER_FILES:
            if (student_dir / name).is_file():
                shutil.copy(student_dir / name, tmp / name)
        if card:
            (tmp / "README.md").write_text(card, encoding="utf-8")
        (tmp / "potstill.json").write_text(json.dumps({"provenance": prov, "type": dtype}, indent=1, sort_keys=True))

    return convert(student_dir, out, quantization=None if dtype == "float32" else dtype, extra=extra)

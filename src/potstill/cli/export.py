"""``potstill export STUDENT_DIR OUT --format gguf|ct2``: a student where people deploy it.

The work is :func:`potstill.export.student.export_student`: a GGUF file (llama.cpp, Ollama) or a
CTranslate2 directory, each with the student's model card and provenance (teacher, license, terms)
in its metadata. ``report.export`` in a run config does the same for the run's best student.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import UserError
from ..export.student import DEFAULT_TYPE, FORMATS, TYPES, export_student
from ..progress import say

HELP = "write a student as a GGUF file (llama.cpp, Ollama) or a CTranslate2 directory, with its card and provenance"


def add_parser(sub) -> None:
    p = sub.add_parser("export", help=HELP, description=HELP + ".")
    p.add_argument("student", metavar="STUDENT_DIR", type=Path, help="a model directory (e.g. RUN/students/kd)")
    p.add_argument("out", metavar="OUT", type=Path, help="the .gguf file or the CTranslate2 directory to write")
    p.add_argument("--format", choices=FORMATS, required=True, help="gguf or ct2")
    types = "; ".join(f"{f}: {', '.join(t)} (default {DEFAULT_TYPE[f]})" for f, t in TYPES.items())
    p.add_argument("--type", default=None, help=f"weight type ({types})")
    p.set_defaults(func=main)


def main(args) -> int:
    if args.out.exists():
        raise UserError("OUT exists (pick a new path; nothing is overwritten)", str(args.out))
    started = time.perf_counter()
    out = export_student(args.student, args.out, args.format, args.type)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) if out.is_dir() else out.stat().st_size
    took = time.perf_counter() - started
    say(f"export: {args.student} -> {out} ({args.format}, {size / 2**20:.1f} MiB) in {took:.1f} s")
    return 0

"""``potstill convert MODEL.gguf OUT_DIR``: a GGUF file as a Hugging Face model directory.

The work is :func:`potstill.gguf.convert_gguf`. Not needed before a run: a ``.gguf`` path works
wherever a model directory does (converted once into the cache, :func:`potstill.gguf.gguf_model_dir`).
"""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import UserError
from ..gguf import check_gguf_file, convert_gguf
from ..progress import say

HELP = "convert a GGUF file (llama.cpp) into a Hugging Face model directory (safetensors, tokenizer, model card)"
DESCRIPTION = HELP + (
    ". The weights are dequantized by transformers (float32 by default: exact); the tokenizer keeps its chat template; "
    "README.md's front matter carries the GGUF's license and name and the file's sha256. A .gguf path also works "
    "directly wherever potstill takes a model directory (teacher.model, student.model, potstill serve): it is "
    "converted once into $POTSTILL_CACHE/gguf/ (default ~/.cache/potstill)."
)


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help=HELP, description=DESCRIPTION)
    p.add_argument("gguf", metavar="MODEL.gguf", type=Path, help="the GGUF file")
    p.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="the directory to write (must not exist, or be empty)")
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default="float32",
        help="how the dequantized weights are stored (default: float32, exact)",
    )
    p.set_defaults(func=main)


def main(args) -> int:

    check_gguf_file(args.gguf)
    if args.out_dir.exists() and (not args.out_dir.is_dir() or any(args.out_dir.iterdir())):
        raise UserError("OUT_DIR exists and is not an empty directory (pick a new one)", str(args.out_dir))
    started = time.perf_counter()
    say(f"convert: {args.gguf} -> {args.out_dir} ({args.dtype})")
    convert_gguf(args.gguf, args.out_dir, dtype=args.dtype)
    files = ", ".join(sorted(p.name for p in args.out_dir.iterdir() if p.is_file()))
    say(f"convert: done in {time.perf_counter() - started:.1f} s: {args.out_dir} ({files})")
    return 0

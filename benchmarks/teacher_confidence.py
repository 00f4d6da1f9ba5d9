"""Where the teacher's soft labels carry information: its confidence per answer token, by prompt origin.

    python benchmarks/teacher_confidence.py [RUN_DIR]   # default: the demo's run, runs/helpdesk-demo

Reads ``RUN_DIR/generate/generations.jsonl`` (the top-k log-probs the teacher recorded while
answering the training prompts, ``teacher.top_logprobs``) and, when the expand stage ran,
``RUN_DIR/expand/train.jsonl`` (how each synthetic prompt was made). Prints, for the original
prompts and each expand method: answer tokens, the share whose top-1 probability exceeds 0.99, the
share below 0.9, the mean mass below the top-1 token and the mean entropy over the recorded top-k.
KD can only add to SFT where that mass is; the last line is JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from potstill.evaluate.confidence import confidence_by_origin, prompt_origins, teacher_confidence
from potstill.io import read_jsonl

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    run = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "runs" / "helpdesk-demo"
    gens = read_jsonl(run / "generate" / "generations.jsonl")
    expanded = run / "expand" / "train.jsonl"
    origins = prompt_origins(read_jsonl(expanded)) if expanded.exists() else {}
    rows = {**confidence_by_origin(gens, origins), "all": teacher_confidence(gens)}
    print(f"{'origin':<12} {'tokens':>7} {'p>0.99':>7} {'p<0.9':>7} {'mass<top1':>10} {'H top-k':>8}")
    for name, c in rows.items():
        print(
            f"{name:<12} {c['tokens']:>7} {c['share_top1_over_0_99']:>7.3f} {c['share_top1_under_0_9']:>7.3f}"
            f" {c['mean_mass_below_top1']:>10.4f} {c['mean_topk_entropy_nats']:>8.4f}"
        )
    print(json.dumps({"benchmark": "teacher_confidence", "run": str(run), "by_origin": rows}))


if __name__ == "__main__":
    main()

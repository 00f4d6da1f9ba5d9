"""Write the helpdesk query files: data/train.jsonl (unlabelled), data/test.jsonl, data/ood.jsonl.

    python examples/helpdesk/make_data.py [--train 2000 --test 300 --ood 300 --seed 0]

Each line is ``{"id", "prompt", "category", "facts"}``; no answers (the student learns from the
teacher's answers to the train prompts; test/ood are graded by potstill.tasks.helpdesk.scorer).
Deterministic: the same arguments always write the same files.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))  # run from a checkout without installing

from potstill.tasks.helpdesk.kb import load_kb  # noqa: E402
from potstill.tasks.helpdesk.queries import generate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "data")
    ap.add_argument("--kb", type=Path, default=None, help="knowledge base (default: the packaged kb.json)")
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--test", type=int, default=300)
    ap.add_argument("--ood", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    kb = load_kb(args.kb)
    args.out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test", "ood"):
        records = generate(kb, split, getattr(args, split), seed=args.seed)
        path = args.out / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        cats = Counter(r["category"] for r in records)
        print(
            f"{path}: {len(records)} records, {len({r['prompt'] for r in records})} distinct prompts, "
            + ", ".join(f"{c} {n}" for c, n in sorted(cats.items()))
        )


if __name__ == "__main__":
    main()

"""Feasibility check: can a student with <= 1/10 of the teacher's parameters, trained only on the
teacher's answers, keep >= 85% of the teacher's fact accuracy on held-out test queries?

    python examples/helpdesk/check_student.py [--epochs 20 --lr 3e-3 --minutes 3]

1. greedy teacher answers for data/train.jsonl (batched, left padding);
2. a student initialised randomly from student/config.json, plain SFT on those answers
   (cross-entropy on the response tokens, prompt masked) for ``--epochs`` (about 1 min on two
   idle CPU cores), or less when the optional ``--minutes`` cap is reached first;
3. greedy teacher and student answers on data/test.jsonl and data/ood.jsonl, graded by
   potstill.tasks.helpdesk.scorer. Exits 1 when student/teacher on test is below ``--min-ratio``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_teacher import eval_sets, greedy_answers, n_params, prompt_ids, sft_example, train_sft  # noqa: E402

from potstill.tasks.helpdesk import queries  # noqa: E402
from potstill.tasks.helpdesk.kb import load_kb  # noqa: E402
from potstill.tasks.helpdesk.scorer import score  # noqa: E402


def by_category(records: list[dict], answers: list[str], kb) -> dict[str, float]:
    """Mean score per record category."""
    acc = defaultdict(list)
    for r, a in zip(records, answers):
        acc[r["category"]].append(score(a, r, kb=kb))
    return {c: sum(v) / len(v) for c, v in sorted(acc.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", type=Path, default=HERE / "teacher")
    ap.add_argument("--student", type=Path, default=HERE / "student")
    ap.add_argument("--epochs", type=float, default=20.0, help="student training epochs")
    ap.add_argument("--minutes", type=float, default=None, help="optional cap on student training time")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-ratio", type=float, default=0.85)
    ap.add_argument("--save-student", type=Path, default=None, help="write the trained student here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kb = load_kb()
    tok = AutoTokenizer.from_pretrained(args.teacher)
    teacher = AutoModelForCausalLM.from_pretrained(args.teacher, dtype=torch.float32).eval()
    train_path = HERE / "data" / "train.jsonl"
    train = (
        [json.loads(x) for x in train_path.read_text().splitlines() if x.strip()]
        if train_path.exists()
        else queries.generate(kb, "train", 2000, seed=0)
    )
    sets = eval_sets(kb)

    t0 = time.time()
    train_prompts = [prompt_ids(tok, r["prompt"]) for r in train]
    teacher_train = greedy_answers(teacher, tok, train_prompts)
    t_gen = time.time() - t0
    train_acc = sum(score(a, r, kb=kb) for a, r in zip(teacher_train, train)) / len(train)
    print(f"teacher answered {len(train)} train prompts in {t_gen:.0f}s (its train accuracy {train_acc:.3f})")

    torch.manual_seed(args.seed)
    student = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.student), dtype=torch.float32)
    n_t, n_s = n_params(teacher), n_params(student)
    print(f"teacher {n_t:,} params, student {n_s:,} params ({n_t / n_s:.1f}x smaller)")
    examples = [sft_example(tok, p, a) for p, a in zip(train_prompts, teacher_train)]
    stats = train_sft(
        student,
        examples,
        tok.pad_token_id,
        args.epochs,
        args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        log_every=200,
        max_minutes=args.minutes,
    )
    print(f"student trained {stats['steps']} steps ({stats['epochs']} epochs) in {stats['seconds']:.0f}s")

    rows, t1 = {}, time.time()
    for split, records in sets.items():
        prompts = [prompt_ids(tok, r["prompt"]) for r in records]
        for name, model in (("teacher", teacher), ("student", student)):
            outs = greedy_answers(model, tok, prompts)
            rows[name, split] = by_category(records, outs, kb)
            rows[name, split]["all"] = sum(score(a, r, kb=kb) for a, r in zip(outs, records)) / len(records)
    t_eval = time.time() - t1

    cats = sorted({c for v in rows.values() for c in v if c != "all"})
    print(f"\n{'split':6} {'model':8} {'all':>6} " + " ".join(f"{c:>8}" for c in cats))
    for split in sets:
        for name in ("teacher", "student"):
            r = rows[name, split]
            print(
                f"{split:6} {name:8} {r['all']:6.3f} "
                + " ".join(f"{r[c]:8.3f}" if c in r else f"{'-':>8}" for c in cats)
            )
        ratio = rows["student", split]["all"] / max(1e-9, rows["teacher", split]["all"])
        print(f"{split:6} {'ratio':8} {ratio:6.3f}")
    ratio = rows["student", "test"]["all"] / max(1e-9, rows["teacher", "test"]["all"])
    print(
        f"\ntimes: teacher generation {t_gen:.0f}s, student training {stats['seconds']:.0f}s, "
        f"evaluation {t_eval:.0f}s, total {time.time() - t0:.0f}s"
    )
    if args.save_student:
        student.save_pretrained(args.save_student, safe_serialization=True)
        tok.save_pretrained(args.save_student)
    verdict = "PASS" if ratio >= args.min_ratio else "FAIL"
    print(f"{verdict}: student keeps {ratio:.1%} of the teacher's test accuracy (need {args.min_ratio:.0%})")
    sys.exit(0 if verdict == "PASS" else 1)


if __name__ == "__main__":
    main()

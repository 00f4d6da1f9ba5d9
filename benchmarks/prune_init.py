"""A pruned student vs a random one of the same shape, before (and briefly after) training (CPU).

The shipped helpdesk teacher (``examples/helpdesk/teacher``, Llama, 4 layers x hidden 256, 4.46M
parameters) is pruned with :func:`potstill.prune.prune_model` to about a tenth of its parameters,
calibrated on ``--calibration`` prompts of the helpdesk TRAIN split (chat records, prompt only;
``--calibrate-on-answers`` adds the teacher's greedy answers as ``response_text``). Shapes (head_dim
stays 64):

* ``3x88``: 3 layers, hidden 88, 2 heads, MLP 256 (the primary shape: 428,648 parameters, close to
  ``examples/helpdesk/student``'s 430,800);
* ``4x80``: 4 layers, hidden 80, 1 head, MLP 256 (width only, no layer dropped);
* ``2x96``: 2 layers, hidden 96, 2 heads, MLP 384 (more depth pruning).

Each pruned model is scored by its mean cross-entropy per response token on the teacher's own
greedy answers (``max_new_tokens`` 48, EOS included) to ``--eval`` prompts of the held-out TEST
split, next to the teacher itself and a random init of the same shape (transformers' init, seeded).
All with the default settings (``rescale_norms`` on); the primary shape also with ``depth_metric: loss``
and with ``rescale_norms: false`` (Minitron's plain slicing).

``--recover-steps N`` (default 150, 0 to skip): the primary pruned models (with and without
``rescale_norms``) and their random twin are then both trained N steps (AdamW, lr 3e-3, batch 32,
same batches) with cross-entropy on the teacher's greedy answers to 400 other TRAIN prompts --
sequence-level KD, a stand-in for the KD recovery -- and scored again, with the helpdesk fact
accuracy of their greedy answers on the same TEST prompts.

Last line: one JSON object with every figure. ``python benchmarks/prune_init.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from potstill.chat import encode_prompt
from potstill.models import count_params, load_model, load_tokenizer
from potstill.prune.run import prune_model
from potstill.prune.settings import PruneSettings
from potstill.tasks.helpdesk import generate, load_kb, score

TEACHER = ROOT / "examples" / "helpdesk" / "teacher"
SHAPES = {
    "3x88": {"num_layers": 3, "hidden_size": 88, "num_attention_heads": 2, "intermediate_size": 256},
    "4x80": {"num_layers": 4, "hidden_size": 80, "num_attention_heads": 1, "intermediate_size": 256},
    "2x96": {"num_layers": 2, "hidden_size": 96, "num_attention_heads": 2, "intermediate_size": 384},
}
MAX_NEW = 48


@torch.no_grad()
def greedy(model, tok, records: list[dict], batch: int = 64) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids incl. EOS when it stopped) of greedy answers, left-padded batches."""
    out = []
    for i in range(0, len(records), batch):
        prompts = [encode_prompt(tok, r["messages"]) for r in records[i : i + batch]]
        width = max(map(len, prompts))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        gen = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=MAX_NEW,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )[:, width:]
        for p, row in zip(prompts, gen.tolist()):
            answer = row[: row.index(tok.eos_token_id) + 1] if tok.eos_token_id in row else row
            out.append((p, answer))
    return out


@torch.no_grad()
def answer_loss(model, pairs) -> float:
    """Mean cross-entropy per answer token (all answers' tokens pooled)."""
    total, count = 0.0, 0
    for prompt, answer in pairs:
        ids = torch.tensor([prompt + answer])
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
        total += float(torch.nn.functional.cross_entropy(logits, torch.tensor(answer), reduction="sum"))
        count += len(answer)
    return total / count


def accuracy(model, tok, records) -> float:
    answers = greedy(model, tok, records)
    return sum(score(tok.decode(a, skip_special_tokens=True), r) for (_, a), r in zip(answers, records)) / len(records)


def train(model, pairs, steps: int, seed: int, batch: int = 32, lr: float = 3e-3) -> None:
    """``steps`` AdamW steps of cross-entropy on the answers (prompt masked); same batches for every model."""
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    order: list[int] = []
    for _ in range(steps):
        if len(order) < batch:
            order += rng.sample(range(len(pairs)), len(pairs))
        chunk, order = [pairs[i] for i in order[:batch]], order[batch:]
        width = max(len(p) + len(a) for p, a in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), -100)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, (p, a) in enumerate(chunk):
            ids[r, : len(p) + len(a)] = torch.tensor(p + a)
            labels[r, len(p) : len(p) + len(a)] = torch.tensor(a)
            mask[r, : len(p) + len(a)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def random_twin(pruned_dir: Path, seed: int = 0):
    return load_model(pruned_dir, init="random", seed=seed).eval()


def chat(records):
    return [{"messages": [{"role": "user", "content": r["prompt"]}], "facts": r["facts"]} for r in records]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calibration", type=int, default=200, help="calibration prompts (TRAIN split)")
    ap.add_argument("--eval", type=int, default=50, help="evaluation prompts (TEST split)")
    ap.add_argument("--recover-steps", type=int, default=150, help="training steps of the recovery check (0: skip)")
    ap.add_argument("--calibrate-on-answers", action="store_true", help="calibrate on prompt + teacher answer")
    ap.add_argument("--quick", action="store_true", help="primary shape only, no recovery check")
    args = ap.parse_args()
    torch.manual_seed(0)
    load = os.getloadavg()[0]
    kb = load_kb()
    tok = load_tokenizer(TEACHER)
    teacher = load_model(TEACHER).eval()
    train_records = chat(generate(kb, "train", args.calibration + 400, seed=0))
    calib, recover = train_records[: args.calibration], train_records[args.calibration :]
    evals = chat(generate(kb, "test", args.eval, seed=0))
    t0 = time.perf_counter()
    eval_pairs = greedy(teacher, tok, evals)
    if args.calibrate_on_answers:
        calib = [
            {**r, "response_text": tok.decode(a, skip_special_tokens=True)}
            for r, (_, a) in zip(calib, greedy(teacher, tok, calib))
        ]
    result = {
        "benchmark": "prune_init",
        "teacher_params": count_params(teacher),
        "teacher_loss": round(answer_loss(teacher, eval_pairs), 4),
        "eval_answer_tokens": sum(len(a) for _, a in eval_pairs),
        "calibration_prompts": len(calib),
        "calibrate_on_answers": args.calibrate_on_answers,
        "runs": {},
    }
    print(
        f"teacher: {result['teacher_params']:,} params, loss {result['teacher_loss']:.3f} on its own answers to "
        f"{len(evals)} test prompts ({result['eval_answer_tokens']} tokens; generated in "
        f"{time.perf_counter() - t0:.1f}s)"
    )
    variants = (
        [("3x88", {})]
        if args.quick
        else [
            ("3x88", {}),
            ("3x88", {"depth_metric": "loss"}),
            ("3x88", {"rescale_norms": False}),
            ("4x80", {}),
            ("2x96", {}),
        ]
    )
    recover_pairs, random_after = None, {}
    with tempfile.TemporaryDirectory(prefix="prune_init.") as tmp:
        for shape, extra in variants:
            name = shape + "".join(f" {k}={v}" for k, v in extra.items())
            out = Path(tmp) / name.replace(" ", "_").replace("=", "-")
            settings = PruneSettings(**SHAPES[shape], **extra, calibration_samples=len(calib))
            summary = prune_model(TEACHER, out, settings, calib, tokenizer=tok, device="cpu")
            pruned, rand = load_model(out).eval(), random_twin(out)
            run = {
                "params": summary["student_params"],
                "ratio": round(summary["student_params"] / result["teacher_params"], 4),
                "kept_layers": summary["kept_layers"],
                "prune_seconds": summary["seconds"],
                "calibration_tokens": summary["calibration_tokens"],
                "pruned_loss": round(answer_loss(pruned, eval_pairs), 4),
                "random_loss": round(answer_loss(rand, eval_pairs), 4),
            }
            print(
                f"{name:<28} {run['params']:>8,} params ({run['ratio']:.1%}), layers {run['kept_layers']}, "
                f"pruned in {run['prune_seconds']:.1f}s: loss pruned {run['pruned_loss']:.3f} vs random "
                f"{run['random_loss']:.3f} (teacher {result['teacher_loss']:.3f}, uniform {math.log(1024):.3f})"
            )
            if shape == "3x88" and args.recover_steps and not args.quick and "depth_metric" not in extra:
                recover_pairs = recover_pairs or greedy(teacher, tok, recover)
                t1 = time.perf_counter()
                train(pruned, recover_pairs, args.recover_steps, seed=0)
                run["pruned_loss_after"] = round(answer_loss(pruned, eval_pairs), 4)
                run["pruned_accuracy_after"] = round(accuracy(pruned, tok, evals), 4)
                if shape not in random_after:  # one random twin per shape: same init, same batches
                    train(rand, recover_pairs, args.recover_steps, seed=0)
                    random_after[shape] = (
                        round(answer_loss(rand, eval_pairs), 4),
                        round(accuracy(rand, tok, evals), 4),
                    )
                run["random_loss_after"], run["random_accuracy_after"] = random_after[shape]
                run["recover_steps"], run["recover_seconds"] = args.recover_steps, round(time.perf_counter() - t1, 1)
                print(
                    f"{'':<28} after {args.recover_steps} steps of CE on teacher answers: loss pruned "
                    f"{run['pruned_loss_after']:.3f} vs random {run['random_loss_after']:.3f}; fact accuracy "
                    f"pruned {run['pruned_accuracy_after']:.2f} vs random {run['random_accuracy_after']:.2f}"
                )
            result["runs"][name] = run
    result["teacher_accuracy"] = round(accuracy(teacher, tok, evals), 4)
    result.update(
        load_avg=[round(load, 2), round(os.getloadavg()[0], 2)],
        torch=torch.__version__,
        machine=platform.machine(),
        threads=torch.get_num_threads(),
    )
    print(f"teacher fact accuracy on the {len(evals)} test prompts: {result['teacher_accuracy']:.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Build the helpdesk tokenizer and train the reference teacher (CPU, a few minutes).

    python examples/helpdesk/train_teacher.py            # writes teacher/ and student/ here

The teacher is a small Llama trained on (prompt -> gold answer) pairs: prompts from the TRAINING
templates plus augmentation (typos, chit-chat, two-question joins; never the test templates),
answers composed from the KB by ``potstill.tasks.helpdesk.answers``, each in a random one of its
fact's phrasings (so the teacher's next-token distribution holds real alternatives, as a large
model's does; ``--one-phrasing`` trains the earlier over-confident teacher). Also writes ``student/``
(config + the same tokenizer, no weights) and ``teacher/train_report.json`` (test/ood scores).
The helpers here (encoding, the SFT loop, greedy evaluation) are reused by check_student.py.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))  # run from a checkout without installing

from potstill.tasks.helpdesk import answers, queries  # noqa: E402
from potstill.tasks.helpdesk.kb import load_kb  # noqa: E402
from potstill.tasks.helpdesk.scorer import score  # noqa: E402

SPECIALS = ["<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{{- bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('roles must be system, user or assistant') }}{% endif %}"
    "{% if message['role'] == 'assistant' %}<|assistant|>{% generation %}"
    "{{ message['content'] | trim }}{{ eos_token }}{% endgeneration %}"
    "{% else %}<|{{ message['role'] }}|>{{ message['content'] | trim }}<|end|>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SYSTEMS = [
    "You are the Quillkeep support assistant.",
    "You are a helpful support agent for Quillkeep. Answer briefly.",
    "Answer the customer's question about Quillkeep in one sentence.",
]
TEACHER = dict(
    hidden_size=256, num_hidden_layers=4, intermediate_size=1024, num_attention_heads=4, num_key_value_heads=4
)
STUDENT = dict(hidden_size=80, num_hidden_layers=4, intermediate_size=256, num_attention_heads=2, num_key_value_heads=2)
VOCAB = 1024


def build_tokenizer(corpus: list[str], vocab_size: int = VOCAB):
    """Byte-level BPE trained on ``corpus``, wrapped as a PreTrainedTokenizerFast with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        additional_special_tokens=SPECIALS[3:],
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        model_max_length=256,
        clean_up_tokenization_spaces=False,
    )


def llama_config(tok, **sizes):
    """A tied-embedding LlamaConfig for ``tok``'s vocabulary."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tok),
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        rms_norm_eps=1e-5,
        **sizes,
    )


def n_params(model) -> int:
    """Parameters as instantiated (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def prompt_ids(tok, prompt: str, system: str | None = None) -> list[int]:
    """Chat-template ids of a one-question conversation, ready for the answer."""
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return list(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False))


def sft_example(tok, p_ids: list[int], answer: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels) with the prompt masked (-100) and the answer + eos supervised."""
    a_ids = tok(answer, add_special_tokens=False).input_ids + [tok.eos_token_id]
    return p_ids + a_ids, [-100] * len(p_ids) + a_ids


def _batches(examples: list, batch_size: int, rng: random.Random) -> list[list]:
    order = list(examples)
    rng.shuffle(order)
    pool = batch_size * 32  # sort by length inside pools: little padding, still random
    batches = []
    for i in range(0, len(order), pool):
        chunk = sorted(order[i : i + pool], key=lambda e: len(e[0]))
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def train_sft(
    model,
    examples: list,
    pad_id: int,
    epochs: float,
    lr: float,
    batch_size: int = 64,
    seed: int = 0,
    warmup: int = 30,
    log_every: int = 50,
    max_minutes: float | None = None,
) -> dict:
    """Plain SFT: cross-entropy on labelled tokens, AdamW, linear warmup + cosine decay to 10%.

    Runs ``epochs`` epochs, or fewer when ``max_minutes`` is given and reached first: progress is
    then the larger of the step and time fractions, so the schedule always decays to its end.
    """
    rng = random.Random(seed)
    torch.manual_seed(seed)
    total = max(1, int(epochs * math.ceil(len(examples) / batch_size)))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    model.train()
    step, t0, batches, progress = 0, time.time(), [], 0.0
    while progress < 1.0:
        if not batches:
            batches = _batches(examples, batch_size, rng)
        batch = batches.pop()
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))
        width = max(len(e[0]) for e in batch)
        ids = torch.tensor([e[0] + [pad_id] * (width - len(e[0])) for e in batch])
        labels = torch.tensor([e[1] + [-100] * (width - len(e[1])) for e in batch])
        mask = (torch.arange(width)[None, :] < torch.tensor([len(e[0]) for e in batch])[:, None]).long()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        elapsed = time.time() - t0
        progress = max(step / total, elapsed / (60 * max_minutes) if max_minutes else 0.0)
        if step % log_every == 0 or progress >= 1.0:
            print(f"  step {step}/{total}  loss {loss.item():.4f}  {elapsed:.0f}s", flush=True)
    model.eval()
    return {
        "steps": step,
        "planned_steps": total,
        "epochs": round(step * batch_size / len(examples), 2),
        "seconds": round(time.time() - t0, 1),
    }


@torch.inference_mode()
def greedy_answers(model, tok, prompts: list[list[int]], batch_size: int = 128, max_new_tokens: int = 40) -> list[str]:
    """Greedy answers for tokenized prompts (left padding, batched by length)."""
    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.tensor([[tok.pad_token_id] * (width - len(prompts[i])) + prompts[i] for i in idx])
        mask = (ids != tok.pad_token_id).long()
        gen = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        for i, row in zip(idx, gen[:, width:].tolist()):
            if tok.eos_token_id in row:
                row = row[: row.index(tok.eos_token_id)]
            out[i] = tok.decode(row, skip_special_tokens=True).strip()
    return out


def evaluate(model, tok, records: list[dict], kb) -> tuple[float, list[str]]:
    """Mean scorer value of greedy answers over ``records``, and the answers."""
    outs = greedy_answers(model, tok, [prompt_ids(tok, r["prompt"]) for r in records])
    return sum(score(a, r, kb=kb) for a, r in zip(outs, records)) / max(1, len(records)), outs


def eval_sets(kb) -> dict[str, list[dict]]:
    """The shipped test/ood files when present, else the same sets regenerated."""
    sets = {}
    for split in ("test", "ood"):
        path = HERE / "data" / f"{split}.jsonl"
        sets[split] = (
            [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            if path.exists()
            else queries.generate(kb, split, 300, seed=0)
        )
    return sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "teacher")
    ap.add_argument("--student-out", type=Path, default=HERE / "student")
    ap.add_argument("--n-plain", type=int, default=6000, help="training-template prompts")
    ap.add_argument("--n-augment", type=int, default=10000, help="augmented prompts")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--one-phrasing",
        action="store_true",
        help="answer every fact with its first phrasing only (the demo teacher before 2026-12-01: its soft labels "
        "carry almost nothing beyond its text); by default each example draws one of answers.ANSWER_TEMPLATES",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    kb = load_kb()
    rng = random.Random(args.seed)
    recs = queries.generate(kb, "train", args.n_plain, seed=args.seed) + queries.generate(
        kb, "augment", args.n_augment, seed=args.seed
    )
    pairs = [
        (
            r["prompt"],
            answers.compose(kb, r["facts"], None if args.one_phrasing else rng),
            rng.choice(SYSTEMS) if rng.random() < 0.2 else None,
        )
        for r in recs
    ]
    corpus = [p for p, _, _ in pairs] + [a for _, a, _ in pairs] + SYSTEMS
    tok = build_tokenizer(corpus)
    examples = [sft_example(tok, prompt_ids(tok, p, s), a) for p, a, s in pairs]
    lens = [len(e[0]) for e in examples]
    print(
        f"tokenizer: {len(tok)} tokens; {len(examples)} examples, mean length "
        f"{sum(lens) / len(lens):.1f}, max {max(lens)}"
    )

    from transformers import GenerationConfig, LlamaForCausalLM

    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(llama_config(tok, **TEACHER))
    student = LlamaForCausalLM(llama_config(tok, **STUDENT))
    nt, ns = n_params(model), n_params(student)
    print(f"teacher {nt:,} params; student {ns:,} params (ratio {nt / ns:.1f}x)")
    assert nt >= 10 * ns, "the student must have at most 1/10 of the teacher's parameters"
    stats = train_sft(model, examples, tok.pad_token_id, args.epochs, args.lr, seed=args.seed)
    sets = eval_sets(kb)
    report = {
        "params": nt,
        "student_params": ns,
        "train": stats,
        "examples": len(examples),
        "args": {k: v for k, v in vars(args).items() if not isinstance(v, Path)},
    }
    for split, records in sets.items():
        report[split], outs = evaluate(model, tok, records, kb)
        print(f"teacher {split}: {report[split]:.3f} fact accuracy on {len(records)} queries")
        for r, a in list(zip(records, outs))[:3]:
            print(f"   {r['prompt']!r} -> {a!r}")
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        do_sample=False,
        max_new_tokens=48,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tok.save_pretrained(args.out)
    args.student_out.mkdir(parents=True, exist_ok=True)
    student.config.architectures = ["LlamaForCausalLM"]
    student.config.save_pretrained(args.student_out)
    student.generation_config = model.generation_config
    student.generation_config.save_pretrained(args.student_out)
    tok.save_pretrained(args.student_out)
    report["seconds_total"] = round(time.time() - t0, 1)
    (args.out / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} and {args.student_out} in {report['seconds_total']:.0f}s")


if __name__ == "__main__":
    main()

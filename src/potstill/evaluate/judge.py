"""Pairwise LLM judge: which of two answers to a prompt is better, asked in both orders.

The judge is any generator: a :data:`JudgeFn` takes a list of chat prompts (each a list of
``{"role", "content"}`` messages) and returns one text per prompt. :func:`local_judge` serves it
with a local model (:class:`~potstill.teachers.hf.LocalGenerator`, batched, greedy);
:func:`api_judge` with an API provider through the generate stage's engine and answer cache
(``openai:MODEL`` / ``anthropic:MODEL``).

For every prompt the judge sees the student's and the teacher's answer twice, once in each
position (:data:`TEMPLATE`), so a judge that always prefers "Answer A" cannot favour either model.
Each reply is parsed by :func:`parse_verdict`, in order:

1. ``strict`` - the requested last line ``Verdict: A|B|tie`` (also ``[[A]]``, ``[[B]]``, ``[[C]]``/``[[tie]]``);
2. ``lenient`` - phrases such as "Answer B is better", "I prefer A", "both are equally good", or a
   bare ``A``/``B``/``tie`` reply; used only when every phrase found points the same way;
3. ``similarity`` (the deterministic fallback, ``fallback="similarity"``) - when the reply holds no
   verdict (a small model that was never trained to judge usually just answers the question), the
   answer whose words the reply shares more of (word-level F1) wins; a difference below
   ``SIMILARITY_MARGIN`` is a tie, a reply sharing no word with either answer stays unparsed.

Two answers that are equal after normalisation are a tie without asking the judge (``identical``).
The two orders are combined per prompt (from the student's side): when both give a verdict and
they agree, that verdict; when they disagree, a tie (MT-Bench's conservative rule); when only one
order gave a verdict, that one; when none did, the prompt is left out (``undecided``).

:func:`judge_summary` reports win / tie / loss rates over the decided prompts, the preference
``win + tie / 2`` with a bootstrap interval, and how far the verdicts can be trusted: the share
of replies parsed strictly, leniently or by the fallback, position consistency (both orders agree),
the share of "A" among the decisive verdicts (position bias) and agreement with the task's own
scorer where that scorer separates the two answers.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from ..io import read_jsonl
from ..teachers.base import GenerationSettings
from ..teachers.generate import run_generate
from ..teachers.hf import LocalGenerator
from ..teachers.spec import teacher_spec
from .stats import bootstrap_ci, rounded

JudgeFn = Callable[[list[list[dict]]], list[str]]

SYSTEM = "You are an impartial judge of answers."
TEMPLATE = """Which answer is better: more correct, complete and helpful? Length alone is no merit.

[Request]
{question}

[Answer A]
{a}

[Answer B]
{b}

Give one sentence of reasons, then a last line "Verdict: A", "Verdict: B" or "Verdict: tie"."""
SIMILARITY_MARGIN = 0.05
OUTCOMES = ("win", "tie", "loss")

_STRICT = [
    re.compile(r"verdict\s*[:=\-]?\s*[\*\"'\[\(]*\s*(answer\s+)?(?P<v>a|b|tie|c)\b", re.I),
    re.compile(r"\[\[\s*(?P<v>a|b|c|tie)\s*\]\]", re.I),
]
_TIE = re.compile(
    r"\b(it'?s a tie|a tie|tie\b|equally (good|bad|helpful|correct)|both (answers )?(are )?(equally|"
    r"the same|equivalent|identical)|neither (answer )?is better|no (clear )?difference)",
    re.I,
)
_SIDE = [
    re.compile(
        r"\b(answer|response|option)\s*\(?(?P<v>[ab])\)?\s+(is|was|seems|looks)\s+(clearly\s+|much\s+|slightly\s+)?"
        r"(better|superior|preferable|more\s+\w+|best)",
        re.I,
    ),
    re.compile(r"\bprefer(red|able)?\s+(answer\s+|response\s+)?\(?(?P<v>[ab])\)?(?![\w'])", re.I),
    re.compile(r"\b(answer|response)\s+(?P<v>[ab])\s+wins\b", re.I),
    re.compile(r"(^|[.!?]\s+)(?P<v>[AB])\s+is\s+better\b"),
    re.compile(r"\bbetter\s+(answer|response|one)\s+is\s+\(?(?P<v>[ab])\b", re.I),
]
_BARE = re.compile(r"^\W*(answer\s+)?(?P<v>a|b|tie)\W*$", re.I)
_WORD = re.compile(r"\w+")


def judge_messages(question: str, a: str, b: str) -> list[dict]:
    """The judge's chat prompt for one (question, answer A, answer B)."""
    return [
        {"role": "system", "content": SYSTEM},
        {
            "role": "user",
            "content": TEMPLATE.format(question=question.strip(), a=a.strip() or "(empty)", b=b.strip() or "(empty)"),
        },
    ]


def _norm_verdict(v: str) -> str:
    v = v.strip().lower()
    return "tie" if v in ("tie", "c") else v.upper()


def _f1(x: list[str], y: list[str]) -> float:
    if not x or not y:
        return 0.0

    common = sum((Counter(x) & Counter(y)).values())
    if not common:
        return 0.0
    p, r = common / len(x), common / len(y)
    return 2 * p * r / (p + r)


def parse_verdict(
    text: str, a: str | None = None, b: str | None = None, fallback: str = "similarity"
) -> tuple[str | None, str]:
    """``(verdict, how)``: verdict ``"A"``, ``"B"``, ``"tie"`` or None; how ``strict``, ``lenient``,
    ``similarity`` or ``none`` (see the module docstring). ``a``/``b`` are the answers, for the fallback."""
    text = text or ""
    for pat in _STRICT:
        found = [m.group("v") for m in pat.finditer(text)]
        if found:
            return _norm_verdict(found[-1]), "strict"
    bare = _BARE.match(text.strip())
    if bare:
        return _norm_verdict(bare.group("v")), "lenient"
    votes = {_norm_verdict(m.group("v")) for pat in _SIDE for m in pat.finditer(text)}
    if _TIE.search(text):
        votes.add("tie")
    if len(votes) == 1:
        return votes.pop(), "lenient"
    if fallback == "similarity" and a is not None and b is not None and not votes:
        w = _WORD.findall(text.lower())
        fa, fb = _f1(w, _WORD.findall(a.lower())), _f1(w, _WORD.findall(b.lower()))
        if fa == 0 and fb == 0:
            return None, "none"
        if abs(fa - fb) < SIMILARITY_MARGIN:
            return "tie", "similarity"
        return ("A" if fa > fb else "B"), "similarity"
    return None, "none"


def _outcome(verdict: str | None, student_is_a: bool) -> str | None:
    if verdict is None:
        return None
    if verdict == "tie":
        return "tie"
    return "win" if (verdict == "A") == student_is_a else "loss"


def _same(x: str, y: str) -> bool:
    return " ".join(_WORD.findall((x or "").lower())) == " ".join(_WORD.findall((y or "").lower()))


def combine(first: str | None, second: str | None) -> str | None:
    """One outcome from the two orders' outcomes (student's side): agree -> it, disagree -> tie."""
    if first is None or second is None:
        return first if second is None else second
    return first if first == second else "tie"


def judge_pairs(
    judge: JudgeFn,
    questions: Sequence[str],
    student: Sequence[str],
    teacher: Sequence[str],
    ids: Sequence[str] | None = None,
    fallback: str = "similarity",
) -> list[dict]:
    """Judge every (student, teacher) answer pair in both orders; one row per prompt.

    Row: ``{"id", "outcome": "win"|"tie"|"loss"|None, "consistent": bool|None, "identical": bool,
    "orders": [{"student_position": "A"|"B", "verdict", "parse", "outcome", "rationale"}, ...]}``;
    ``rationale`` is the judge's whole reply.
    """
    ids = list(ids) if ids is not None else [str(i) for i in range(len(questions))]
    todo, prompts = [], []
    for i, (q, s, t) in enumerate(zip(questions, student, teacher)):
        if _same(s, t):
            continue
        todo.append(i)
        prompts.append(judge_messages(q, s, t))  # student as A
        prompts.append(judge_messages(q, t, s))  # student as B
    replies = judge(prompts) if prompts else []
    if len(replies) != len(prompts):
        raise RuntimeError(f"the judge returned {len(replies)} replies for {len(prompts)} prompts")
    by_index = {i: (replies[2 * j], replies[2 * j + 1]) for j, i in enumerate(todo)}
    rows = []
    for i, (s, t) in enumerate(zip(student, teacher)):
        if i not in by_index:
            rows.append({"id": ids[i], "outcome": "tie", "consistent": True, "identical": True, "orders": []})
            continue
        orders = []
        for reply, student_is_a in zip(by_index[i], (True, False)):
            a, b = (s, t) if student_is_a else (t, s)
            verdict, how = parse_verdict(reply, a, b, fallback)
            orders.append(
                {
                    "student_position": "A" if student_is_a else "B",
                    "verdict": verdict,
                    "parse": how,
                    "outcome": _outcome(verdict, student_is_a),
                    "rationale": reply,
                }
            )
        o1, o2 = orders[0]["outcome"], orders[1]["outcome"]
        rows.append(
            {
                "id": ids[i],
                "outcome": combine(o1, o2),
                "identical": False,
                "consistent": (o1 == o2) if o1 is not None and o2 is not None else None,
                "orders": orders,
            }
        )
    return rows


def judge_summary(
    rows: Sequence[dict],
    student_scores: Sequence[float] | None = None,
    teacher_scores: Sequence[float] | None = None,
    samples: int = 10_000,
    seed: int = 0,
) -> dict:
    """Win/tie/loss rates (student vs teacher) over decided prompts, with the judge's reliability.

    Keys: ``n``, ``decided``, ``identical``, ``win``, ``tie``, ``loss`` (rates), ``preference``
    (win + tie/2) and ``preference_ci95``; over the judge's replies: ``strict_rate``, ``lenient_rate``,
    ``fallback_rate``, ``unparsed_rate`` and ``parse_rate`` (strict + lenient: a verdict the judge
    actually stated); ``consistency`` (both orders agree, among prompts where both gave one),
    ``first_position_rate`` (share of "A" among A/B verdicts: 0.5 is unbiased), and
    ``scorer_agreement`` (where the task scorer ranks the two answers differently and the judge was
    decisive, the share where the judge picks the higher-scoring one) with ``scorer_agreement_n``.
    """

    n = len(rows)
    decided = [r for r in rows if r["outcome"] is not None]
    counts = {o: sum(r["outcome"] == o for r in decided) for o in OUTCOMES}
    replies = [o for r in rows for o in r["orders"]]
    how = {k: sum(o["parse"] == k for o in replies) for k in ("strict", "lenient", "similarity", "none")}
    both = [r for r in rows if r["consistent"] is not None and not r["identical"]]
    ab = [o["verdict"] for o in replies if o["verdict"] in ("A", "B")]
    pref = [{"win": 1.0, "tie": 0.5, "loss": 0.0}[r["outcome"]] for r in decided]

    def rate(k: int, d: int) -> float | None:
        return round(k / d, 6) if d else None

    agree = total = 0
    if student_scores is not None and teacher_scores is not None:
        for r, s, t in zip(rows, student_scores, teacher_scores):
            if s != t and r["outcome"] in ("win", "loss"):
                total += 1
                agree += (r["outcome"] == "win") == (s > t)
    return {
        "n": n,
        "decided": len(decided),
        "identical": sum(r["identical"] for r in rows),
        **{o: rate(counts[o], len(decided)) for o in OUTCOMES},
        "preference": rate(sum(pref), len(pref)) if pref else None,
        "preference_ci95": rounded(bootstrap_ci(pref, samples, seed)) if pref else None,
        "replies": len(replies),
        "strict_rate": rate(how["strict"], len(replies)),
        "lenient_rate": rate(how["lenient"], len(replies)),
        "fallback_rate": rate(how["similarity"], len(replies)),
        "unparsed_rate": rate(how["none"], len(replies)),
        "parse_rate": rate(how["strict"] + how["lenient"], len(replies)),
        "consistency": rate(sum(r["consistent"] for r in both), len(both)),
        "first_position_rate": rate(sum(v == "A" for v in ab), len(ab)),
        "scorer_agreement": rate(agree, total),
        "scorer_agreement_n": total,
    }


# -- judges -------------------------------------------------------------------------------


def local_judge(
    path: str | Path,
    *,
    dtype: str = "float32",
    max_new_tokens: int = 48,
    batch_size: int = 16,
    seed: int = 0,
    generator=None,
) -> JudgeFn:
    """A judge served by a local model directory (loaded on the first call, then kept), greedy."""

    state = {"gen": generator}
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed)

    def judge(prompts: list[list[dict]]) -> list[str]:
        if state["gen"] is None:
            state["gen"] = LocalGenerator(path, dtype=dtype, seed=seed)
        records = [{"id": str(i), "messages": m} for i, m in enumerate(prompts)]
        out = {r["id"]: r["text"] for r in state["gen"].generate(records, settings)}
        return [out[str(i)] for i in range(len(prompts))]

    judge.close = lambda: state.update(gen=None)  # type: ignore[attr-defined]
    return judge


def api_judge(
    teacher_cfg,
    work_dir: str | Path,
    *,
    seed: int = 0,
    prices: tuple = (None, None),
    cache_path: str | Path | None = None,
    spec=None,
) -> JudgeFn:
    """A judge served by an API model (``spec``, a :class:`~potstill.teachers.spec.ModelSpec`, default parsed
    from ``teacher_cfg``, which also gives its request settings), through the teacher's engine and answer cache."""
    spec = spec or teacher_spec(teacher_cfg, Path)

    work = Path(work_dir)
    calls = {"n": 0}

    def judge(prompts: list[list[dict]]) -> list[str]:
        calls["n"] += 1
        out = work / f"judge-{calls['n']}"
        records = [{"id": f"j{i}", "messages": m} for i, m in enumerate(prompts)]
        run_generate(
            teacher_cfg,
            spec,
            records,
            out,
            work / f"judge-{calls['n']}.work",
            seed,
            prices=prices,
            cache_path=Path(cache_path) if cache_path else None,
        )
        rows = {g["id"]: g["text"] for g in read_jsonl(out / "generations.jsonl")}
        return [rows.get(f"j{i}", "") for i in range(len(prompts))]  # a failed request: no verdict

    return judge

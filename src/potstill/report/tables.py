"""The report's tables, built once from the report dict and rendered as Markdown, HTML or rich.

Every cell is a plain (unescaped) string; each renderer escapes for its own format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..data.config import EXPANDED_VALIDATION

NA = "n/a"
TRAINING_LABELS = {
    "runtime_s": "Training time",
    "train_loss": "Final train loss",
    "steps": "Steps",
    "epochs": "Epochs",
    "examples": "Examples",
}


@dataclass
class Table:
    """A titled table of string cells; ``numeric[i]`` right-aligns column ``i``."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    numeric: list[bool] = field(default_factory=list)
    note: str | None = None


def _ok(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt_params(n) -> str:
    """3700000 -> '3.7M'."""
    if not _ok(n):
        return NA
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return str(int(n))


def fmt_seconds(s) -> str:
    """A duration: '45 ms', '1.20 s', '3m 05s', '2h 03m'."""
    if not _ok(s):
        return NA
    if s < 0.01:
        return f"{s * 1000:.1f} ms"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.2f} s"
    if s < 3600:
        return f"{int(s // 60)}m {int(s % 60):02d}s"
    return f"{int(s // 3600)}h {int(s % 3600 // 60):02d}m"


def fmt_usd(x) -> str:
    """Dollars with enough decimals to show three significant digits of small amounts."""
    if not _ok(x):
        return NA
    if x == 0:
        return "$0"
    if abs(x) >= 100:
        return f"${x:,.0f}"
    if abs(x) >= 1:
        return f"${x:,.2f}"
    digits = min(12, 2 - math.floor(math.log10(abs(x))))
    return f"${x:.{digits}f}".rstrip("0").rstrip(".")


def fmt_num(x, spec: str = ".3f", suffix: str = "") -> str:
    """A number with ``spec`` (``n/a`` when missing or not finite)."""
    return f"{x:{spec}}{suffix}" if _ok(x) else NA


def fmt_mb(x) -> str:
    """Memory in MB, switching to GB above 1024 MB."""
    if not _ok(x):
        return NA
    return f"{x / 1024:.2f} GB" if x >= 1024 else f"{x:.0f} MB"


def fmt_value(key: str, x) -> str:
    """A training-summary value, formatted by its key."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return NA if x is None else str(x)
    if key.endswith("_s") or key.endswith("seconds"):
        return fmt_seconds(x)
    if isinstance(x, int):
        return f"{x:,}"
    return fmt_num(x, ".4g")


def fmt_ci(ci, spec: str = ".3f", suffix: str = "") -> str:
    """A confidence interval ``[lo, hi]`` as '[0.712, 0.801]' (``n/a`` when missing)."""
    if not isinstance(ci, (list, tuple)) or len(ci) != 2 or not all(_ok(x) for x in ci):
        return NA
    return f"[{ci[0]:{spec}}{suffix}, {ci[1]:{spec}}{suffix}]"


def fmt_with_ci(x, ci, spec: str = ".3f", suffix: str = "") -> str:
    """'0.756 [0.712, 0.801]'; just the value without an interval."""
    value = fmt_num(x, spec, suffix)
    interval = fmt_ci(ci, spec, suffix)
    return value if interval == NA else f"{value} {interval}"


def fmt_p(p) -> str:
    """A p-value: '0.032', '4.2e-09' (small ones in scientific notation)."""
    if not _ok(p):
        return NA
    return f"{p:.1e}" if p < 0.001 else f"{p:.3f}"


def fmt_pct(x) -> str:
    """A rate in [0, 1] as a percentage: 0.256 -> '25.6%'."""
    return fmt_num(100 * x, ".1f", "%") if _ok(x) else NA


def split_label(split: str) -> str:
    """'test' -> 'Test', 'ood' -> 'OOD', 'validation_expanded' -> 'Validation (expanded)', an eval set
    'prod_logs' -> 'Prod logs'."""
    if split.lower() == "ood":
        return "OOD"
    if split == EXPANDED_VALIDATION:
        return "Validation (expanded)"
    return split.replace("_", " ").capitalize()


def model_label(name: str, m: dict) -> str:
    """The name, plus the method when it differs ('student-a (kd)')."""
    method = m.get("method")
    return f"{name} ({method})" if method and method != name else name


def models_table(report: dict, compact: bool = False) -> Table:
    """Teacher vs students: role, size, speed, memory, cost and quality per split."""
    splits = list(report["splits"])
    if compact:  # short headers for a terminal
        headers = ["Model", "Role", "Method", "Params", "p50", "Tok/s", "Memory", "Cost/query"]
        headers += [f"{split_label(s)} vs teacher" for s in splits]
    else:
        headers = [
            "Model",
            "Role",
            "Method",
            "Params",
            "p50 latency",
            "p95 latency",
            "Tokens/s",
            "Peak memory",
            "Cost/query",
            "Cost/1M queries",
        ]
        for s in splits:
            lab = split_label(s)
            headers += [f"{lab} score", f"{lab} % of teacher", f"{lab} gap recovered"]
    rows = []
    for name, m in report["models"].items():
        row = [
            name,
            m.get("role") or NA,
            m.get("method") or "-",
            fmt_params(m.get("params")),
            fmt_seconds(m.get("latency_p50_s")),
        ]
        row += [] if compact else [fmt_seconds(m.get("latency_p95_s"))]
        row += [
            fmt_num(m.get("tokens_per_s"), ",.1f"),
            fmt_mb(m.get("peak_rss_mb")),
            fmt_usd(m.get("cost_per_query_usd")),
        ]
        row += [] if compact else [fmt_usd(m.get("cost_per_1m_queries_usd"))]
        for s in splits:
            q = report["splits"][s].get(name, {})
            pct = fmt_num(q.get("pct_of_teacher"), ".1f", "%")
            row += [pct] if compact else [fmt_num(q.get("score")), pct, fmt_num(q.get("gap_recovered"), ".2f")]
        rows.append(row)
    numeric = [False, False, False] + [True] * (len(headers) - 3)
    return Table("Teacher vs students", headers, rows, numeric)


def students_table(report: dict) -> Table | None:
    """The students side by side (SFT vs KD): quality, speed, cost and training."""
    students = {n: m for n, m in report["models"].items() if m.get("role") == "student"}
    if not students:
        return None
    methods = list(dict.fromkeys(str(m.get("method")).upper() for m in students.values() if m.get("method")))
    title = " vs ".join(methods) if len(methods) > 1 else "Students"
    rows = []
    for s in report["splits"]:
        lab = split_label(s)
        for key, text, spec, suffix in (
            ("score", "score", ".3f", ""),
            ("pct_of_teacher", "% of teacher", ".1f", "%"),
            ("gap_recovered", "gap recovered", ".2f", ""),
            ("rouge_l", "ROUGE-L", ".3f", ""),
        ):
            rows.append(
                [f"{lab} {text}"] + [fmt_num(report["splits"][s].get(n, {}).get(key), spec, suffix) for n in students]
            )
            ci_key = "ci95" if key == "score" else f"{key}_ci95"
            if any(report["splits"][s].get(n, {}).get(ci_key) for n in students):
                rows.append(
                    [f"{lab} {text} 95% CI"]
                    + [fmt_ci(report["splits"][s].get(n, {}).get(ci_key), spec, suffix) for n in students]
                )
    rows.append(["p50 latency"] + [fmt_seconds(m.get("latency_p50_s")) for m in students.values()])
    rows.append(["Tokens/s"] + [fmt_num(m.get("tokens_per_s"), ",.1f") for m in students.values()])
    rows.append(["Cost/query"] + [fmt_usd(m.get("cost_per_query_usd")) for m in students.values()])
    training = report.get("training") or {}
    for key, text in (("runtime_s", "Training time"), ("train_loss", "Final train loss")):
        if any(key in (training.get(m.get("method")) or {}) for m in students.values()):
            rows.append(
                [text] + [fmt_value(key, (training.get(m.get("method")) or {}).get(key)) for m in students.values()]
            )
    headers = ["Metric"] + [model_label(n, m) for n, m in students.items()]
    return Table(title, headers, rows, [False] + [True] * len(students))


def category_tables(report: dict) -> list[Table]:
    """Per-category scores, one table per split that has categories."""
    tables = []
    names = list(report["models"])
    for s, by_model in report["splits"].items():
        cats: list[str] = []
        for n in names:
            for c in by_model.get(n, {}).get("per_category") or {}:
                if c not in cats:
                    cats.append(c)
        if not cats:
            continue
        counts: dict[str, int] = {}
        for n in names:
            for c, k in (by_model.get(n, {}).get("per_category_n") or {}).items():
                counts.setdefault(c, k)
        rows = [
            [c]
            + [
                fmt_with_ci(
                    (by_model.get(n, {}).get("per_category") or {}).get(c),
                    (by_model.get(n, {}).get("per_category_ci95") or {}).get(c),
                )
                for n in names
            ]
            + ([str(counts.get(c, NA))] if counts else [])
            for c in sorted(cats)
        ]
        headers = ["Category"] + names + (["n"] if counts else [])
        tables.append(Table(f"Per category ({split_label(s)})", headers, rows, [False] + [True] * (len(headers) - 1)))
    return tables


def ci_tables(report: dict) -> list[Table]:
    """Per split: each model's score, difference to the teacher, % of teacher and gap recovered with
    paired-bootstrap 95% intervals, and McNemar's p against the teacher (binary scores)."""
    tables = []
    boot = report.get("bootstrap") or {}
    for s, by_model in report["splits"].items():
        if not any((q or {}).get("ci95") for q in by_model.values()):
            continue
        rows = []
        for name in report["models"]:
            q = by_model.get(name)
            if q is None:
                continue
            if report["models"][name].get("role") == "teacher":  # the reference itself: nothing to compare
                rows.append(
                    [
                        name,
                        fmt_with_ci(q.get("score"), q.get("ci95")),
                        "-",
                        "-",
                        "-",
                        "-",
                        "-",
                        str(q["n"]) if isinstance(q.get("n"), int) else NA,
                    ]
                )
                continue
            rows.append(
                [
                    name,
                    fmt_with_ci(q.get("score"), q.get("ci95")),
                    fmt_with_ci(q.get("diff_vs_teacher"), q.get("diff_ci95"), "+.3f"),
                    fmt_with_ci(q.get("pct_of_teacher"), q.get("pct_of_teacher_ci95"), ".1f", "%"),
                    fmt_with_ci(q.get("gap_recovered"), q.get("gap_recovered_ci95"), ".2f"),
                    fmt_p(q.get("mcnemar_p")),
                    fmt_p(q.get("mcnemar_midp")),
                    str(q["n"]) if isinstance(q.get("n"), int) else NA,
                ]
            )
        note = (
            f"95% confidence intervals: paired percentile bootstrap over the prompts "
            f"({boot.get('samples', 'n/a')} resamples, seed {boot.get('seed', 'n/a')}). McNemar: exact two-sided "
            "test (and mid-p) of each model against the teacher on the discordant prompts; only for binary scores."
        )
        tables.append(
            Table(
                f"Quality with 95% confidence intervals ({split_label(s)})",
                ["Model", "Score", "vs teacher", "% of teacher", "Gap recovered", "McNemar p", "mid-p", "n"],
                rows,
                [False] + [True] * 7,
                note=note,
            )
        )
    return tables


def pair_label(pair: dict) -> str:
    """'kd − sft' (a minus b: the later training method minus the earlier)."""
    return f"{pair.get('a')} − {pair.get('b')}"


def pair_verdict(d: dict) -> str:
    """'kd better' when the interval of a - b excludes 0; 'no clear difference' when it contains it."""
    if fmt_ci(d.get("diff_ci95")) == NA:
        return NA
    return f"{d['better']} better" if d.get("better") else "no clear difference"


def pair_line(pair: dict, split: str) -> str:
    """One sentence: 'kd − sft on OOD: +4.1 points of teacher %, 95% CI [+1.2, +7.0]: kd better.'"""
    if _ok(pair.get("pct_points")):
        value = f"{fmt_num(pair['pct_points'], '+.1f')} points of teacher %"
        ci = fmt_ci(pair.get("pct_points_ci95"), "+.1f")
    else:  # the teacher's mean is 0: the plain score difference
        value = f"{fmt_num(pair.get('diff'), '+.3f')} in score"
        ci = fmt_ci(pair.get("diff_ci95"), "+.3f")
    return f"{pair_label(pair)} on {split_label(split)}: {value}, 95% CI {ci}: {pair_verdict(pair)}."


def pair_tables(report: dict) -> list[Table]:
    """Per split with two or more students: each pair's difference (later method minus earlier) in points
    of % of teacher and in score, with paired-bootstrap 95% intervals and a verdict, overall and per category."""
    tables = []
    boot = report.get("bootstrap") or {}
    for s, pairs in (report.get("pairs") or {}).items():
        if not pairs:
            continue
        rows = []
        for pair in pairs:
            parts = [("all", pair)] + sorted((pair.get("per_category") or {}).items())
            for cat, d in parts:
                rows.append(
                    [
                        pair_label(pair),
                        cat,
                        fmt_num(d.get("pct_points"), "+.1f"),
                        fmt_ci(d.get("pct_points_ci95"), "+.1f"),
                        fmt_with_ci(d.get("diff"), d.get("diff_ci95"), "+.3f"),
                        pair_verdict(d),
                        str(d["n"]) if isinstance(d.get("n"), int) else NA,
                    ]
                )
        note = (
            "a − b is the later training method minus the earlier. Points of teacher %: 100 × (a − b) "
            "/ the teacher's mean score, i.e. a's % of teacher minus b's. 95% confidence intervals: paired percentile "
            f"bootstrap over the prompts, the same resamples for both students ({boot.get('samples', 'n/a')} "
            f"resamples, seed {boot.get('seed', 'n/a')}). Verdict: the student the whole interval favours; no clear "
            "difference when it contains 0."
        )
        tables.append(
            Table(
                f"Students compared ({split_label(s)})",
                ["Pair", "Category", "Points of teacher %", "95% CI", "Score difference [95% CI]", "Verdict", "n"],
                rows,
                [False, False, True, True, True, False, True],
                note=note,
            )
        )
    return tables


AGREEMENT_COLUMNS = (
    ("rouge_l", "ROUGE-L", "num"),
    ("chrf", "chrF", "num"),
    ("agreement", "Same answer", "pct"),
    ("top1_agreement", "Top-1 agreement", "pct"),
    ("kl", "KL(teacher||model)", "num"),
    ("repetition", "Repeated 3-grams", "pct"),
    ("length_ratio", "Length ratio", "ratio"),
    ("finish_length_rate", "Hit max tokens", "pct"),
    ("empty_rate", "Empty answers", "pct"),
)


def agreement_table(report: dict) -> Table | None:
    """Agreement with the teacher's answers (surface and teacher-forced) and degeneration, per model and split."""
    present = [
        c
        for c in AGREEMENT_COLUMNS
        if any(_ok((q or {}).get(c[0])) for by in report["splits"].values() for q in by.values())
    ]
    if not present:
        return None
    fmt = {"num": lambda x: fmt_num(x), "pct": fmt_pct, "ratio": lambda x: fmt_num(x, ".2f")}
    rows = []
    for s, by_model in report["splits"].items():
        for name in report["models"]:
            q = by_model.get(name)
            if q is not None:
                rows.append([name, split_label(s)] + [fmt[kind](q.get(key)) for key, _, kind in present])
    note = (
        "Against the teacher's answers to the same prompts: ROUGE-L and chrF (surface overlap), same answer "
        "(equal after normalisation); top-1 agreement and KL(teacher||model) in nats per token are teacher-forced on "
        "the teacher's held-out answers. Degeneration: share of repeated word 3-grams within an answer, mean answer "
        "length relative to the teacher's, shares of answers cut at max_new_tokens and of empty answers."
    )
    return Table(
        "Agreement with the teacher and degeneration",
        ["Model", "Split"] + [h for _, h, _ in present],
        rows,
        [False, False] + [True] * len(present),
        note=note,
    )


def scorers_table(report: dict) -> Table | None:
    """The extra configured scorers, per model and split, with 95% intervals."""
    names: list[str] = []
    for by in report["splits"].values():
        for q in by.values():
            for k in (q or {}).get("scorers") or {}:
                if k not in names:
                    names.append(k)
    if not names:
        return None
    rows = []
    for s, by_model in report["splits"].items():
        for name in report["models"]:
            q = by_model.get(name)
            if q is not None:
                sc = q.get("scorers") or {}
                rows.append(
                    [name, split_label(s)]
                    + [fmt_with_ci((sc.get(k) or {}).get("score"), (sc.get(k) or {}).get("ci95")) for k in names]
                )
    return Table("More scorers", ["Model", "Split"] + names, rows, [False, False] + [True] * len(names))


def judge_table(report: dict) -> Table | None:
    """Win / tie / loss against the teacher from the pairwise LLM judge, with how far the verdicts can be trusted."""
    rows = []
    for s, by_model in report["splits"].items():
        for name in report["models"]:
            j = (by_model.get(name) or {}).get("judge")
            if not j:
                continue
            rows.append(
                [
                    name,
                    split_label(s),
                    fmt_pct(j.get("win")),
                    fmt_pct(j.get("tie")),
                    fmt_pct(j.get("loss")),
                    fmt_with_ci(j.get("preference"), j.get("preference_ci95"), ".2f"),
                    f"{j.get('decided', 0)}/{j.get('n', 0)}",
                    fmt_pct(j.get("identical", 0) / j["n"]) if j.get("n") else NA,
                    fmt_pct(j.get("parse_rate")),
                    fmt_pct(j.get("fallback_rate")),
                    fmt_pct(j.get("consistency")),
                    fmt_pct(j.get("first_position_rate")),
                    fmt_pct(j.get("scorer_agreement")),
                ]
            )
    if not rows:
        return None
    info = report.get("judge") or {}
    overall = ""
    if info.get("replies"):
        overall = (
            f" Over its {info['replies']} replies: {fmt_pct(info.get('parse_rate'))} stated a verdict, "
            f"{fmt_pct(info.get('fallback_rate'))} were decided by the fallback, {fmt_pct(info.get('unparsed_rate'))} "
            f"stayed unparsed; agreement with the task scorer {fmt_pct(info.get('scorer_agreement'))}."
        )
    note = (
        f"Judge: {info.get('model') or 'n/a'}.{overall} Each prompt is judged twice, the model's answer first as A, "
        "then as B; "
        "both orders agreeing give the verdict, disagreeing ones a tie, and identical answers are a tie without a "
        "call. Preference = win + tie/2. Stated: share of replies with a verdict the judge wrote itself; fallback: "
        f"share decided by word overlap of the reply with one answer ({info.get('fallback', 'similarity')}); "
        "consistent: both orders agree; 'A' chosen: share of A among A/B verdicts (0.5 = no position bias); "
        "agrees with scorer: where the task scorer separates the two answers."
    )
    headers = [
        "Model",
        "Split",
        "Win",
        "Tie",
        "Loss",
        "Preference",
        "Decided",
        "Identical",
        "Stated",
        "Fallback",
        "Consistent",
        "'A' chosen",
        "Agrees with scorer",
    ]
    return Table("LLM judge vs the teacher", headers, rows, [False, False] + [True] * 11, note=note)


def contamination_table(report: dict) -> Table | None:
    """Exact and n-gram overlap of each evaluation split's prompts with the training prompts."""
    c = report.get("contamination") or {}
    if not c.get("splits"):
        return None
    rows = [
        [
            split_label(s),
            str(d.get("n")),
            str(d.get("exact")),
            str(d.get("near_duplicates")),
            fmt_pct(d.get("contaminated_rate")),
            fmt_pct(d.get("mean_ngram_overlap")),
            fmt_pct(d.get("max_ngram_overlap")),
        ]
        for s, d in c["splits"].items()
    ]
    n, near = c.get("ngram", "n"), c.get("near_duplicate")
    thr = c.get("threshold")
    note = (
        f"Evaluation prompts against {c.get('train_prompts', 'the')} training prompts (user turns, normalised words). "
        f"Exact: same words; near: at least {fmt_pct(near)} of the prompt's word {n}-grams occur in training. "
        + (
            f"Threshold {fmt_pct(thr)} of a split"
            + (
                " (exceeded, forced)."
                if c.get("forced") and any(d.get("contaminated_rate", 0) > thr for d in c["splits"].values())
                else "."
            )
            if _ok(thr)
            else ""
        )
    )
    headers = ["Split", "Prompts", "Exact", "Near", "Contaminated", f"Mean {n}-gram overlap", "Max overlap"]
    return Table("Contamination check", headers, rows, [False] + [True] * 6, note=note)


def cost_table(report: dict) -> Table:
    """Cost per query, per million and per year, with the yearly saving against the teacher."""
    qpd = report.get("queries_per_day")
    teacher_year = next(
        (m.get("cost_per_year_usd") for m in report["models"].values() if m.get("role") == "teacher"), None
    )
    rows = []
    for name, m in report["models"].items():
        year = m.get("cost_per_year_usd")
        saving = teacher_year - year if _ok(teacher_year) and _ok(year) else None
        rows.append(
            [
                name,
                m.get("price_basis") or NA,
                fmt_usd(m.get("cost_per_query_usd")),
                fmt_usd(m.get("cost_per_1m_queries_usd")),
                fmt_usd(year),
                fmt_usd(saving),
            ]
        )
    title = f"Cost at {qpd:,} queries/day" if isinstance(qpd, int) else "Cost"
    headers = ["Model", "Price basis", "Cost/query", "Cost/1M queries", "Cost/year", "Saving/year vs teacher"]
    return Table(title, headers, rows, [False, False, True, True, True, True], note=break_even_text(report))


def break_even_text(report: dict) -> str | None:
    """One sentence per break-even entry (a single result or ``{student: result}``)."""
    be = report.get("break_even")
    if not isinstance(be, dict) or not be:
        return None
    entries = [(be.get("student"), be)] if "queries" in be else list(be.items())
    out = []
    for who, e in entries:
        if not isinstance(e, dict):
            continue
        subject = f"Distilling {who}" if who else "Distillation"
        cost = fmt_usd(e.get("distill_cost_usd"))
        if e.get("queries") is None:
            out.append(f"{subject} (one-off {cost}) saves nothing per query, so it never pays for itself on cost.")
        else:
            days = e.get("days")
            when = f" ({fmt_num(days, ',.1f')} days at the configured traffic)" if _ok(days) else ""
            out.append(f"{subject} (one-off {cost}) pays for itself after {e['queries']:,} queries{when}.")
    return " ".join(out) or None


def training_table(report: dict) -> Table | None:
    """One row per training method with its scalar summary values."""
    training = report.get("training") or {}
    keys: list[str] = []
    for summary in training.values():
        for k, v in (summary or {}).items():
            if k not in keys and (v is None or isinstance(v, (int, float, str, bool))):
                keys.append(k)
    if not training or not keys:
        return None
    rows = [[method] + [fmt_value(k, (s or {}).get(k)) for k in keys] for method, s in training.items()]
    headers = ["Method"] + [TRAINING_LABELS.get(k, k) for k in keys]
    return Table("Training", headers, rows, [False] + [True] * len(keys))


def warning_lines(report: dict) -> list[str]:
    """The report's warnings as plain lines (OOD retention, judge reliability, contamination, degeneration)."""
    return [str(w.get("message") if isinstance(w, dict) else w) for w in (report.get("warnings") or [])]

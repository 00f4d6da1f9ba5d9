"""The report's tables, built once from the report dict and rendered as Markdown, HTML or rich.

Every cell is a plain (unescaped) string; each renderer escapes for its own format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

NA = "n/a"
TRAINING_LABELS = {"runtime_s": "Training time", "train_loss": "Final train loss", "steps": "Steps",
                   "epochs": "Epochs", "examples": "Examples"}


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


def split_label(split: str) -> str:
    """'test' -> 'Test', 'ood' -> 'OOD'."""
    return "OOD" if split.lower() == "ood" else split.capitalize()


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
        headers = ["Model", "Role", "Method", "Params", "p50 latency", "p95 latency", "Tokens/s", "Peak memory",
                   "Cost/query", "Cost/1M queries"]
        for s in splits:
            lab = split_label(s)
            headers += [f"{lab} score", f"{lab} % of teacher", f"{lab} gap recovered"]
    rows = []
    for name, m in report["models"].items():
        row = [name, m.get("role") or NA, m.get("method") or "-", fmt_params(m.get("params")),
               fmt_seconds(m.get("latency_p50_s"))]
        row += [] if compact else [fmt_seconds(m.get("latency_p95_s"))]
        row += [fmt_num(m.get("tokens_per_s"), ",.1f"), fmt_mb(m.get("peak_rss_mb")), fmt_usd(m.get("cost_per_query_usd"))]
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
        for key, text, spec, suffix in (("score", "score", ".3f", ""), ("pct_of_teacher", "% of teacher", ".1f", "%"),
                                        ("gap_recovered", "gap recovered", ".2f", ""), ("rouge_l", "ROUGE-L", ".3f", "")):
            rows.append([f"{lab} {text}"] + [fmt_num(report["splits"][s].get(n, {}).get(key), spec, suffix) for n in students])
    rows.append(["p50 latency"] + [fmt_seconds(m.get("latency_p50_s")) for m in students.values()])
    rows.append(["Tokens/s"] + [fmt_num(m.get("tokens_per_s"), ",.1f") for m in students.values()])
    rows.append(["Cost/query"] + [fmt_usd(m.get("cost_per_query_usd")) for m in students.values()])
    training = report.get("training") or {}
    for key, text in (("runtime_s", "Training time"), ("train_loss", "Final train loss")):
        if any(key in (training.get(m.get("method")) or {}) for m in students.values()):
            rows.append([text] + [fmt_value(key, (training.get(m.get("method")) or {}).get(key)) for m in students.values()])
    headers = ["Metric"] + [model_label(n, m) for n, m in students.items()]
    return Table(title, headers, rows, [False] + [True] * len(students))


def category_tables(report: dict) -> list[Table]:
    """Per-category scores, one table per split that has categories."""
    tables = []
    names = list(report["models"])
    for s, by_model in report["splits"].items():
        cats: list[str] = []
        for n in names:
            for c in (by_model.get(n, {}).get("per_category") or {}):
                if c not in cats:
                    cats.append(c)
        if not cats:
            continue
        rows = [[c] + [fmt_num((by_model.get(n, {}).get("per_category") or {}).get(c)) for n in names] for c in sorted(cats)]
        tables.append(Table(f"Per category ({split_label(s)})", ["Category"] + names, rows, [False] + [True] * len(names)))
    return tables


def cost_table(report: dict) -> Table:
    """Cost per query, per million and per year, with the yearly saving against the teacher."""
    qpd = report.get("queries_per_day")
    teacher_year = next((m.get("cost_per_year_usd") for m in report["models"].values() if m.get("role") == "teacher"), None)
    rows = []
    for name, m in report["models"].items():
        year = m.get("cost_per_year_usd")
        saving = teacher_year - year if _ok(teacher_year) and _ok(year) else None
        rows.append([name, m.get("price_basis") or NA, fmt_usd(m.get("cost_per_query_usd")),
                     fmt_usd(m.get("cost_per_1m_queries_usd")), fmt_usd(year), fmt_usd(saving)])
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


def all_tables(report: dict) -> list[Table]:
    """Every table of the report, in display order."""
    tables = [models_table(report), students_table(report), *category_tables(report), cost_table(report),
              training_table(report)]
    return [t for t in tables if t is not None]

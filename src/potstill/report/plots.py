"""The report's figures as PNG bytes, drawn with matplotlib's Agg canvas (no pyplot, no display).

Each function returns ``None`` when the report has nothing to draw for it.
"""

from __future__ import annotations

import io
import math

from .tables import split_label

COLORS = {"teacher": "#1f4e79", "student": "#2e8b57", "floor": "#999999"}


def tex_safe(text: str) -> str:
    """Matplotlib treats $...$ as math; escape dollars in labels taken from user data."""
    return str(text).replace("$", r"\$")


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def new_figure(width: float = 6.4, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # defers matplotlib (plots only)
    from matplotlib.figure import Figure  # defers matplotlib (plots only)

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def to_png(fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def quality_vs_cost(report: dict) -> bytes | None:
    """% of the teacher's quality per split against cost per query (log x), one point per model."""
    fig = new_figure()
    ax = fig.add_subplot()
    from matplotlib.lines import Line2D  # defers matplotlib (plots only)

    markers = ["o", "s", "^", "D"]
    drawn, handles = False, []
    for i, (split, by_model) in enumerate(report["splits"].items()):
        xs, ys, names = [], [], []
        for name, m in report["models"].items():
            cost, pct = m.get("cost_per_query_usd"), by_model.get(name, {}).get("pct_of_teacher")
            if _num(cost) and cost > 0 and _num(pct):
                xs.append(cost), ys.append(pct), names.append(name)
        if not xs:
            continue
        drawn = True
        marker = markers[i % len(markers)]
        colors = [COLORS.get(report["models"][n].get("role"), "#cc6600") for n in names]
        ax.scatter(xs, ys, marker=marker, c=colors, s=50, alpha=0.85)
        for x, y, n in zip(xs, ys, names):
            ci = by_model.get(n, {}).get("pct_of_teacher_ci95")
            if _ci(ci) and report["models"][n].get("role") != "teacher":
                ax.errorbar(
                    [x],
                    [y],
                    yerr=[[max(0.0, y - ci[0])], [max(0.0, ci[1] - y)]],
                    fmt="none",
                    ecolor="#777777",
                    elinewidth=1,
                    capsize=2,
                )
        handles.append(Line2D([], [], marker=marker, color="#555555", linestyle="", label=split_label(split)))
        if i == 0:  # label each point of the first split; models on the same spot share one label
            spots: dict[tuple, list[str]] = {}
            for x, y, n in zip(xs, ys, names):
                spots.setdefault((x, y), []).append(n)
            for (x, y), ns in spots.items():
                ax.annotate(tex_safe(", ".join(ns)), (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    if not drawn:
        return None
    ax.set_xscale("log")
    ax.margins(x=0.15, y=0.1)
    ax.set_xlabel("cost per query (USD, log scale)")
    ax.set_ylabel("% of teacher quality")
    ax.legend(handles=handles, title="split", fontsize=8)
    ax.grid(True, alpha=0.3)
    return to_png(fig)


def _ci(x) -> bool:
    return isinstance(x, (list, tuple)) and len(x) == 2 and all(_num(v) for v in x)


def _grouped_bars(
    groups: list[str], series: dict[str, list], ylabel: str, height: float = 3.6, errors: dict[str, list] | None = None
) -> bytes | None:
    """Bars for ``series[name][i]`` at group ``i``; missing values are skipped. ``errors[name][i]`` is an
    optional ``[lo, hi]`` interval drawn as an error bar."""
    if not groups or not series or not any(_num(v) for vals in series.values() for v in vals):
        return None
    fig = new_figure(max(7.2, 1.6 + 0.45 * len(groups) * len(series)), height)
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    for j, (name, vals) in enumerate(series.items()):
        keep = [i for i, v in enumerate(vals) if _num(v)]
        pos = [i + (j - (len(series) - 1) / 2) * width for i in keep]
        heights = [vals[i] for i in keep]
        ax.bar(pos, heights, width=width, label=tex_safe(name))
        cis = [(errors or {}).get(name, [None] * len(vals))[i] for i in keep]
        if any(_ci(c) for c in cis):
            lo = [max(0.0, h - c[0]) if _ci(c) else 0.0 for h, c in zip(heights, cis)]
            hi = [max(0.0, c[1] - h) if _ci(c) else 0.0 for h, c in zip(heights, cis)]
            ax.errorbar(pos, heights, yerr=[lo, hi], fmt="none", ecolor="#333333", elinewidth=1, capsize=3)
    ax.set_xticks(
        range(len(groups)),
        [tex_safe(g) for g in groups],
        rotation=30 if len(groups) > 4 else 0,
        ha="right" if len(groups) > 4 else "center",
    )
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(True, axis="y", alpha=0.3)
    return to_png(fig)


def score_bars(report: dict) -> bytes | None:
    """Primary-scorer score per split, one bar per model."""
    splits = list(report["splits"])
    series = {n: [report["splits"][s].get(n, {}).get("score") for s in splits] for n in report["models"]}
    errors = {n: [report["splits"][s].get(n, {}).get("ci95") for s in splits] for n in report["models"]}
    return _grouped_bars(
        [split_label(s) for s in splits], series, f"score ({report.get('scorer') or 'scorer'})", errors=errors
    )


def latency_plot(report: dict) -> bytes | None:
    """Box plot of the batch-1 latencies of each model."""
    data = {n: [x for x in (m.get("latencies_s") or []) if _num(x)] for n, m in report["models"].items()}
    data = {n: v for n, v in data.items() if v}
    if not data:
        return None
    fig = new_figure()
    ax = fig.add_subplot()
    ax.boxplot([[x * 1000 for x in v] for v in data.values()], tick_labels=[tex_safe(n) for n in data])
    ax.set_ylabel("latency per query, batch 1 (ms)")
    ax.grid(True, axis="y", alpha=0.3)
    return to_png(fig)


def category_bars(report: dict, split: str) -> bytes | None:
    """Per-category score on one split, one bar per model."""
    by_model = report["splits"].get(split, {})
    cats = sorted({c for q in by_model.values() for c in (q.get("per_category") or {})})
    series = {n: [(by_model.get(n, {}).get("per_category") or {}).get(c) for c in cats] for n in report["models"]}
    errors = {n: [(by_model.get(n, {}).get("per_category_ci95") or {}).get(c) for c in cats] for n in report["models"]}
    return _grouped_bars(
        cats,
        series,
        "score (95% CI)" if any(_ci(e) for v in errors.values() for e in v) else "score",
        height=4.0,
        errors=errors,
    )


def ci_plot(report: dict) -> bytes | None:
    """Each non-teacher model's score minus the teacher's per split, with its paired 95% interval."""
    items = []
    for s, by_model in report["splits"].items():
        for name, m in report["models"].items():
            q = by_model.get(name) or {}
            if m.get("role") != "teacher" and _num(q.get("diff_vs_teacher")) and _ci(q.get("diff_ci95")):
                items.append((f"{name} / {split_label(s)}", q["diff_vs_teacher"], q["diff_ci95"], m.get("role")))
    if not items:
        return None
    fig = new_figure(6.4, max(2.4, 0.8 + 0.38 * len(items)))
    ax = fig.add_subplot()
    ys = list(range(len(items)))[::-1]
    for y, (_label, d, (lo, hi), role) in zip(ys, items):
        ax.errorbar(
            [d],
            [y],
            xerr=[[max(0.0, d - lo)], [max(0.0, hi - d)]],
            fmt="o",
            capsize=4,
            color=COLORS.get(role, "#cc6600"),
        )
    ax.axvline(0.0, color="#1f4e79", linestyle="--", linewidth=1)
    ax.set_yticks(ys, [tex_safe(i[0]) for i in items])
    ax.set_xlabel(f"score - teacher's score, 95% CI ({report.get('scorer') or 'scorer'})")
    ax.grid(True, axis="x", alpha=0.3)
    return to_png(fig)


def break_even_plot(report: dict) -> bytes | None:
    """Cumulative cost of serving with the teacher vs distilling once and serving the student, over queries."""
    be = report.get("break_even")
    if not isinstance(be, dict) or "queries" not in be:
        return None
    who = be.get("student") or report.get("best_student")
    teacher = next((m for m in report["models"].values() if m.get("role") == "teacher"), None)
    student = report["models"].get(who) if who else None
    one_off = be.get("distill_cost_usd")
    if (
        not teacher
        or not student
        or not all(_num(x) for x in (one_off, teacher.get("cost_per_query_usd"), student.get("cost_per_query_usd")))
    ):
        return None
    tq, sq = teacher["cost_per_query_usd"], student["cost_per_query_usd"]
    q_be = be.get("queries")
    qpd = report.get("queries_per_day")
    span = 2 * q_be if isinstance(q_be, int) and q_be > 0 else (365 * qpd if isinstance(qpd, int) else 1_000_000)
    xs = [span * i / 100 for i in range(101)]
    fig = new_figure()
    ax = fig.add_subplot()
    ax.plot(xs, [tq * x for x in xs], color=COLORS["teacher"], label="teacher")
    ax.plot(
        xs, [one_off + sq * x for x in xs], color=COLORS["student"], label=tex_safe(f"{who}: distillation + serving")
    )
    if isinstance(q_be, int) and q_be > 0:
        ax.axvline(q_be, color="#cc6600", linestyle="--", linewidth=1)
        days = be.get("days")
        ax.annotate(
            f"break-even: {q_be:,} queries" + (f" ({days:,.1f} days)" if _num(days) else ""),
            (q_be, tq * q_be),
            textcoords="offset points",
            xytext=(6, -14),
            fontsize=8,
        )
    ax.set_xlabel("queries served")
    ax.set_ylabel("cumulative cost (USD)")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, alpha=0.3)
    return to_png(fig)

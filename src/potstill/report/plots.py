"""The report's figures as PNG bytes, drawn with matplotlib's Agg canvas (no pyplot, no display).

Each function returns ``None`` when the report has nothing to draw for it.
"""

from __future__ import annotations

import io
import math

from .tables import split_label

COLORS = {"teacher": "#1f4e79", "student": "#2e8b57", "floor": "#999999"}


def _tex_safe(text: str) -> str:
    """Matplotlib treats $...$ as math; escape dollars in labels taken from user data."""
    return str(text).replace("$", r"\$")


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _figure(width: float = 6.4, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def quality_vs_cost(report: dict) -> bytes | None:
    """% of the teacher's quality per split against cost per query (log x), one point per model."""
    fig = _figure()
    ax = fig.add_subplot()
    from matplotlib.lines import Line2D

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
        handles.append(Line2D([], [], marker=marker, color="#555555", linestyle="", label=split_label(split)))
        if i == 0:  # label each point of the first split; models on the same spot share one label
            spots: dict[tuple, list[str]] = {}
            for x, y, n in zip(xs, ys, names):
                spots.setdefault((x, y), []).append(n)
            for (x, y), ns in spots.items():
                ax.annotate(_tex_safe(", ".join(ns)), (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    if not drawn:
        return None
    ax.set_xscale("log")
    ax.margins(x=0.15, y=0.1)
    ax.set_xlabel("cost per query (USD, log scale)")
    ax.set_ylabel("% of teacher quality")
    ax.legend(handles=handles, title="split", fontsize=8)
    ax.grid(True, alpha=0.3)
    return _png(fig)


def _grouped_bars(groups: list[str], series: dict[str, list], ylabel: str, height: float = 3.6) -> bytes | None:
    """Bars for ``series[name][i]`` at group ``i``; missing values are skipped."""
    if not groups or not series or not any(_num(v) for vals in series.values() for v in vals):
        return None
    fig = _figure(max(7.2, 1.6 + 0.45 * len(groups) * len(series)), height)
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    for j, (name, vals) in enumerate(series.items()):
        pos = [i + (j - (len(series) - 1) / 2) * width for i, v in enumerate(vals) if _num(v)]
        ax.bar(pos, [v for v in vals if _num(v)], width=width, label=_tex_safe(name))
    ax.set_xticks(range(len(groups)), [_tex_safe(g) for g in groups], rotation=30 if len(groups) > 4 else 0, ha="right" if len(groups) > 4 else "center")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(True, axis="y", alpha=0.3)
    return _png(fig)


def score_bars(report: dict) -> bytes | None:
    """Primary-scorer score per split, one bar per model."""
    splits = list(report["splits"])
    series = {n: [report["splits"][s].get(n, {}).get("score") for s in splits] for n in report["models"]}
    return _grouped_bars([split_label(s) for s in splits], series, f"score ({report.get('scorer') or 'scorer'})")


def latency_plot(report: dict) -> bytes | None:
    """Box plot of the batch-1 latencies of each model."""
    data = {n: [x for x in (m.get("latencies_s") or []) if _num(x)] for n, m in report["models"].items()}
    data = {n: v for n, v in data.items() if v}
    if not data:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    ax.boxplot([[x * 1000 for x in v] for v in data.values()], tick_labels=[_tex_safe(n) for n in data])
    ax.set_ylabel("latency per query, batch 1 (ms)")
    ax.grid(True, axis="y", alpha=0.3)
    return _png(fig)


def category_bars(report: dict, split: str) -> bytes | None:
    """Per-category score on one split, one bar per model."""
    by_model = report["splits"].get(split, {})
    cats = sorted({c for q in by_model.values() for c in (q.get("per_category") or {})})
    series = {n: [(by_model.get(n, {}).get("per_category") or {}).get(c) for c in cats] for n in report["models"]}
    return _grouped_bars(cats, series, "score", height=4.0)


def make_plots(report: dict) -> list[tuple[str, bytes]]:
    """Every figure of the report as ``(title, png_bytes)``, in display order."""
    figures = [("Quality vs cost per query", quality_vs_cost(report)),
               ("Score per split", score_bars(report)),
               ("Latency distribution (batch 1)", latency_plot(report))]
    figures += [(f"Per-category score ({split_label(s)})", category_bars(report, s)) for s in report["splits"]]
    return [(title, png) for title, png in figures if png is not None]

"""The report's routing section: the cascade at the calibrated threshold, and the routing curves."""

from __future__ import annotations

from .plots import new_figure, tex_safe, to_png
from .tables import NA, Table, _ok, fmt_ci, fmt_num, fmt_usd, split_label


def _pct_ci(ci) -> str:
    return fmt_ci([100 * x for x in ci], ".1f", "%") if isinstance(ci, list) and None not in ci else NA


def routing_table(report: dict) -> Table | None:
    """Per split: the teacher share (Wilson 95% CI), blended quality (bootstrap 95% CI), APGR and cost per query."""
    r = report.get("routing")
    if not isinstance(r, dict) or not r.get("checks"):
        return None
    rows = []
    for split, c in r["checks"].items():
        cost = c.get("cost") or {}
        label = split_label(split) + (" (calibration)" if c.get("calibration") else "")
        rows.append(
            [
                label,
                str(c.get("n", NA)),
                fmt_num(100 * c["share"], ".1f", "%") if _ok(c.get("share")) else NA,
                _pct_ci(c.get("share_ci95")),
                fmt_num(c.get("student_pct_of_teacher"), ".1f", "%"),
                fmt_num(c.get("pct_of_teacher"), ".1f", "%"),
                fmt_ci(c.get("pct_of_teacher_ci95"), ".1f", "%"),
                fmt_num(c.get("apgr"), ".3f"),
                fmt_usd(cost.get("cascade_usd")),
                fmt_num(100 * cost["saving_vs_teacher"], ".1f", "%") if _ok(cost.get("saving_vs_teacher")) else NA,
            ]
        )
    router, target = r.get("router") or {}, r.get("target") or {}
    goal = []
    if _ok(target.get("quality_pct_of_teacher")):
        goal.append(f"at least {target['quality_pct_of_teacher']:g}% of the teacher's quality")
    if _ok(target.get("max_teacher_share")):
        goal.append(f"at most {100 * target['max_teacher_share']:g}% of queries to the teacher")
    note = (
        f"Student {r.get('student', {}).get('method')} answers; when its {router.get('signal')} score is below "
        f"{fmt_num(router.get('threshold'), '.4g')} the teacher answers instead. Threshold calibrated on "
        f"{target.get('split')} for {' and '.join(goal) or 'the target'}"
        + ("" if target.get("met", True) else " (not reached there)")
        + ". Cost per query: the student always runs, "
        "plus the teacher's cost for the routed share. APGR: area under the normalized routing curve (0.5 = random)."
    )
    headers = [
        "Split",
        "Queries",
        "To teacher",
        "Share 95% CI",
        "Student alone",
        "Cascade % of teacher",
        "Cascade 95% CI",
        "APGR",
        "Cost/query",
        "Saving vs teacher",
    ]
    return Table("Routing: student with teacher fallback", headers, rows, [False] + [True] * 9, note=note)


def routing_plot(report: dict) -> bytes | None:
    """Blended quality (as % of the teacher's) against the share sent to the teacher, one line per split."""
    r = report.get("routing")
    curves = (r or {}).get("curves") if isinstance(r, dict) else None
    if not curves:
        return None
    fig = new_figure()
    ax = fig.add_subplot()
    for split, c in curves.items():
        pts = c.get("points") or []
        top = pts[-1]["quality"] if pts else 0
        if not pts or not top:
            continue
        xs = [100 * p["share"] for p in pts]
        ys = [100 * p["quality"] / top for p in pts]
        (line,) = ax.plot(xs, ys, label=tex_safe(split_label(split)))
        chk = (r.get("checks") or {}).get(split)
        if chk and _ok(chk.get("pct_of_teacher")):
            ax.plot([100 * chk["share"]], [chk["pct_of_teacher"]], "o", color=line.get_color())
    ax.axhline(100.0, color="#1f4e79", linestyle="--", linewidth=1)
    ax.set_xlabel("queries sent to the teacher (%)")
    ax.set_ylabel("blended quality (% of teacher)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, alpha=0.3)
    return to_png(fig)

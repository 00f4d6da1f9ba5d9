"""The iterate loop on the helpdesk demo: serve round 1 behind the gateway, train round 2 on its fallbacks.

    python examples/helpdesk/iterate.py [--round1 runs/helpdesk-demo] [--traffic 600]

1. Round 1 is the demo run with its route stage (``make demo``; ``potstill route calibrate`` if the
   run predates routing). Its route file and KD student are served by the routing gateway
   (:class:`potstill.route.gateway.RoutingBackend`, in-process, with the shipped teacher).
2. Production traffic: fresh noisy helpdesk queries (``queries.generate(kb, "augment", n, seed=11)``:
   typos, chit-chat, two questions in one, mixed and reworded, over the *training* phrasings), minus
   any prompt that is also in an evaluation split. Every query the gateway sends to the teacher is
   appended to ``<round2>/fallbacks.jsonl``. (Traffic drawn from the test phrasings would put near
   copies of the test prompts into training; the eval stage's contamination check refuses that.)
3. Round 2 is ``potstill run`` on the demo config with that log added to ``prompts.sources``
   (``train_only: true``: unlabeled production prompts are for training, not for validation).
4. The measure: on the evaluation splits' queries that *fell back* under round 1's router (the
   ``to_teacher`` rows of round 1's route stage), round 1's KD student vs round 2's, with a paired
   bootstrap 95% interval on the difference; also the whole splits. None of these queries is in the
   traffic, so the gain is generalization from the logged fallbacks, not memorization.

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "src"))

from potstill import api  # noqa: E402
from potstill.errors import UserError  # noqa: E402
from potstill.evaluate.stats import paired_diff_ci  # noqa: E402
from potstill.io import read_json, read_jsonl  # noqa: E402
from potstill.route.features import Router  # noqa: E402
from potstill.route.gateway import FallbackLog, LocalTeacher, RoutingBackend  # noqa: E402
from potstill.serve import HFBackend  # noqa: E402
from potstill.serve.schemas import ChatCompletionRequest  # noqa: E402
from potstill.tasks.helpdesk.kb import load_kb  # noqa: E402
from potstill.tasks.helpdesk.queries import generate  # noqa: E402

# Round 2 trains only the KD student the gateway serves, and skips what the comparison does not use.
ROUND2 = ["train.methods=[kd]", "eval.judge=false", "eval.include_floor=false", "route.enabled=false"]


def traffic(n: int, exclude: set[str], seed: int = 11) -> list[str]:
    """Fresh noisy queries over the training phrasings, none equal to an evaluation prompt."""
    rows = generate(load_kb(None), "augment", n, seed=seed)
    seen, out = set(exclude), []
    for r in rows:
        if r["prompt"] not in seen:
            seen.add(r["prompt"])
            out.append(r["prompt"])
    return out


async def serve_traffic(round1: Path, prompts: list[str], log_path: Path) -> dict:
    route = read_json(round1 / "route" / "route.json")
    student = HFBackend.from_dir(route["student"]["path"], model_name="kd", max_batch=32, batch_wait_ms=10)
    teacher = LocalTeacher(HFBackend.from_dir(HERE / "teacher", model_name="teacher", max_batch=32, batch_wait_ms=10))
    log_path.unlink(missing_ok=True)
    gw = RoutingBackend(student, teacher, Router(route["router"]), FallbackLog(log_path))
    reqs = [
        ChatCompletionRequest(messages=[{"role": "user", "content": p}], temperature=0, max_tokens=48) for p in prompts
    ]
    await asyncio.gather(*(gw.complete(r) for r in reqs))
    await gw.aclose()
    return dict(gw.counts)


def compare(round1: Path, round2: Path, split: str) -> dict:
    routed = {r["id"]: r["to_teacher"] for r in read_jsonl(round1 / "route" / "answers" / f"{split}.jsonl")}
    s1 = {r["id"]: r["score"] for r in read_jsonl(round1 / "eval" / "answers" / f"kd__{split}.jsonl")}
    s2 = {r["id"]: r["score"] for r in read_jsonl(round2 / "eval" / "answers" / f"kd__{split}.jsonl")}
    out = {}
    for name, ids in (("fell_back", [i for i in s1 if routed.get(i)]), ("all", list(s1))):
        a, b = [s1[i] for i in ids], [s2[i] for i in ids]
        ci = paired_diff_ci(b, a, samples=10_000, seed=0) if ids else None
        out[name] = {
            "n": len(ids),
            "round1": sum(a) / max(len(a), 1),
            "round2": sum(b) / max(len(b), 1),
            "diff_ci95": ci,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--round1", type=Path, default=ROOT / "runs" / "helpdesk-demo")
    ap.add_argument("--round2", type=Path, default=ROOT / "runs" / "helpdesk-round2")
    ap.add_argument("--traffic", type=int, default=600)
    ap.add_argument("--reserve", action="store_true", help="serve the traffic again even if the fallback log exists")
    ap.add_argument(
        "--control",
        type=Path,
        default=None,
        help="also train a control round in this run dir on as many random traffic prompts as fell back",
    )
    args = ap.parse_args()
    if not (args.round1 / "route" / "route.json").is_file():
        sys.exit(f"iterate: no route file in {args.round1}; run `make demo` first")
    evals = {
        r["messages"][-1]["content"]
        for s in ("test", "ood", "validation")
        for r in read_jsonl(args.round1 / "prompts" / f"{s}.jsonl")
    }
    prompts = traffic(args.traffic, evals)
    log = args.round2 / "fallbacks.jsonl"
    if log.is_file() and not args.reserve:  # a rerun keeps the log, so round 2's finished stages stay valid
        counts = {"teacher": len(log.read_text().splitlines())}
        print(f"round 1 gateway: reusing {log} ({counts['teacher']} fallbacks; --reserve to serve the traffic again)")
    else:
        counts = asyncio.run(serve_traffic(args.round1, prompts, log))
        print(f"round 1 gateway: {len(prompts)} queries, {counts['teacher']} answered by the teacher, logged to {log}")
    sources = json.dumps([{"path": "data/train.jsonl"}, {"path": str(log.resolve()), "train_only": True}])
    try:
        api.run(HERE / "config.yaml", [f"run_dir={args.round2.resolve()}", f"prompts.sources={sources}", *ROUND2])
    except UserError as e:
        sys.exit(f"iterate: error: {e}")
    result = {
        "traffic": len(prompts),
        "fallbacks": counts["teacher"],
        "splits": {s: compare(args.round1, args.round2, s) for s in ("test", "ood")},
    }
    if args.control is not None:  # same amount of extra data, drawn at random from the traffic
        import random

        args.control.mkdir(parents=True, exist_ok=True)
        picked = random.Random(0).sample(prompts, counts["teacher"])
        extra = args.control / "random.jsonl"
        extra.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in picked))
        control = json.dumps([{"path": "data/train.jsonl"}, {"path": str(extra.resolve()), "train_only": True}])
        try:
            api.run(HERE / "config.yaml", [f"run_dir={args.control.resolve()}", f"prompts.sources={control}", *ROUND2])
        except UserError as e:
            sys.exit(f"iterate: error: {e}")
        result["control"] = {s: compare(args.round1, args.control, s) for s in ("test", "ood")}
        for split, r in result["control"].items():
            for name, c in r.items():
                print(
                    f"control {split} {name} (n={c['n']}): round 1 {c['round1']:.3f} → random extra data "
                    f"{c['round2']:.3f}, difference 95% CI {c['diff_ci95']}"
                )
    for split, r in result["splits"].items():
        for name, c in r.items():
            print(
                f"{split} {name} (n={c['n']}): round 1 {c['round1']:.3f} → round 2 {c['round2']:.3f}, "
                f"difference 95% CI {c['diff_ci95']}"
            )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Peak memory and time of the chunked KD loss vs a naive full-logit implementation (CPU).

For each divergence x {naive, chunked} x N tokens, one forward + backward of
``alpha * T^2 * D(p_T, q_S) + (1 - alpha) * CE`` (alpha 0.5, T 2.0, all N tokens are targets),
each variant in its own fresh Python process:

* naive: student logits ``h_s @ W_s.T`` [N, V] (with autograd) and teacher logits
  ``h_t @ W_t.T`` [N, V] (no grad) both materialised, then
  :func:`potstill.losses.distillation_loss` (log_softmax of both, the divergence, autograd
  backward) -- the way TRL's ``generalized_jsd_loss`` works;
* chunked: :func:`potstill.losses.chunked_distillation_loss` from the same hidden states and
  weights (``--chunk-size`` tokens at a time, gradients computed in the forward pass).

Shapes: V=32000, student hidden 512, teacher hidden 1024, float32; ``h_s`` and ``W_s`` receive
gradients (as a student's final hidden states and lm_head do).

Memory: the process's peak resident set size (Linux ``VmHWM``), reset with
``/proc/self/clear_refs`` after the inputs are allocated and one warm-up iteration has run,
minus the resident size at that moment. So a figure is everything the loss's forward and backward
allocate on top of the inputs -- logits, temporaries, and the gradients of ``h_s`` / ``W_s``
(the same 66 MB ``W_s.grad`` in both). glibc's allocator is pinned in every child so that freed
blocks go back to the OS at once and peaks are comparable: ``MALLOC_ARENA_MAX=2``,
``MALLOC_MMAP_THRESHOLD_=131072`` (fixed, which turns off glibc's dynamic threshold that would
otherwise keep freed blocks up to 32 MiB in the heap), ``MALLOC_TRIM_THRESHOLD_=131072``;
``OMP_NUM_THREADS`` = torch threads = ``--threads`` (default: all CPUs).

Time: the fastest wall time of the timed forward + backward iterations after the warm-up (the
minimum is the estimate least disturbed by other load on the machine), and the process CPU time
(all threads) of that iteration. Each (divergence, N) runs ``--rounds`` rounds in the order
naive, chunked, chunked, naive, ... (a fresh process each time), each process timing ``--reps``
iterations at the largest N and ``reps * N_max / N`` (at most 2) at smaller N, so that both
variants sample the machine's (shared) load alike; the warm-up runs on the first 256 tokens only.
Peak memory is the largest over the rounds (they agree to within a few MiB).

Last line of output: one JSON object, ``memory_ratio`` (naive peak / chunked peak at the largest
N, worst divergence), ``growth`` (chunked peak at the largest N / at the smallest, worst
divergence), ``time_ratio`` (chunked wall time / naive wall time at the largest N, like
``memory_ratio``, worst divergence), ``time_ratio_all_n`` (worst over every N), ``cpu_time_ratio``
and ``cpu_time_ratio_all_n`` (the same with process CPU time, which other load on the machine
disturbs far less than wall time), the load average before and after, and the per-variant
figures under ``results``.

    python benchmarks/kd_loss_memory.py            # N = 1024, 4096; all six divergences (~8 min on 2 idle cores)
    python benchmarks/kd_loss_memory.py --quick    # N = 256, 1024; forward_kl and jsd (~1 min)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
V, H_S, H_T = 32000, 512, 1024
ALPHA, TEMP, BETA, SKEW = 0.5, 2.0, 0.5, 0.1
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tvd")


def _status(key: str) -> int:
    """A ``/proc/self/status`` field in bytes."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) * 1024


def worker(impl: str, div: str, n: int, reps: int, chunk: int, threads: int) -> dict:
    import gc

    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from potstill.losses import chunked_distillation_loss, distillation_loss

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    h_s = (torch.randn(n, H_S, generator=g)).requires_grad_()
    w_s = (torch.randn(V, H_S, generator=g) * H_S**-0.5).requires_grad_()
    h_t = torch.randn(n, H_T, generator=g)
    w_t = torch.randn(V, H_T, generator=g) * (1.5 * H_T**-0.5)
    labels = torch.randint(0, V, (n,), generator=g)
    kw = dict(alpha=ALPHA, temperature=TEMP, divergence=div, beta=BETA, skew_alpha=SKEW)

    def step(m: int) -> float:
        h_s.grad = w_s.grad = None
        hs, ht, y = h_s[:m], h_t[:m], labels[:m]
        if impl == "naive":
            s_logits = hs @ w_s.T
            with torch.no_grad():
                t_logits = ht @ w_t.T
            total, count, _ = distillation_loss(s_logits, y, teacher_logits=t_logits, **kw)
        else:
            total, count, _ = chunked_distillation_loss(
                hs, w_s, y, teacher_hidden=ht, teacher_weight=w_t, chunk_size=chunk, **kw
            )
        loss = total / count
        loss.backward()
        return float(loss.detach())

    step(min(n, 256))  # warm-up (thread pools, allocator, code paths)
    h_s.grad = w_s.grad = None
    gc.collect()
    base = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    times, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = step(n)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    peak = _status("VmHWM") - base
    best = min(range(reps), key=times.__getitem__)
    return {
        "impl": impl,
        "divergence": div,
        "n": n,
        "peak_mib": peak / 2**20,
        "time_s": times[best],
        "cpu_s": cpu[best],
        "times_s": times,
        "loss": loss,
        "w_grad_norm": float(w_s.grad.norm()),
    }


def run_child(impl: str, div: str, n: int, args) -> dict:
    env = dict(os.environ)
    env.update(
        MALLOC_ARENA_MAX="2",
        MALLOC_MMAP_THRESHOLD_="131072",
        MALLOC_TRIM_THRESHOLD_="131072",
        OMP_NUM_THREADS=str(args.threads),
        MKL_NUM_THREADS=str(args.threads),
    )
    reps = max(args.reps, min(2, args.reps * max(args.sizes) // n))
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        impl,
        div,
        str(n),
        "--reps",
        str(reps),
        "--chunk-size",
        str(args.chunk_size),
        "--threads",
        str(args.threads),
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"worker {impl} {div} N={n} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def merge(rounds: list[dict]) -> dict:
    """One variant's figures over its rounds: the largest peak, the fastest iteration."""
    best = min(rounds, key=lambda r: r["time_s"])
    return {
        **best,
        "peak_mib": max(r["peak_mib"] for r in rounds),
        "times_s": [t for r in rounds for t in r["times_s"]],
        "peaks_mib": [round(r["peak_mib"], 1) for r in rounds],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 256, 1024; forward_kl and jsd; 1 round")
    ap.add_argument("--sizes", type=int, nargs="+", help="token counts (default 1024 4096)")
    ap.add_argument("--divergences", nargs="+", choices=DIVERGENCES, help="default: all six")
    ap.add_argument("--reps", type=int, default=1, help="timed iterations per process at the largest N (default 1)")
    ap.add_argument(
        "--rounds", type=int, default=None, help="fresh processes per variant, alternating (default 2; quick 1)"
    )
    ap.add_argument(
        "--chunk-size", type=int, default=None, help="chunked loss tokens per chunk (default: the library's)"
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--worker", nargs=3, metavar=("IMPL", "DIV", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.chunk_size is None:
        sys.path.insert(0, str(ROOT / "src"))
        from potstill.losses.chunked import DEFAULT_CHUNK_SIZE

        args.chunk_size = DEFAULT_CHUNK_SIZE
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    if args.worker:
        impl, div, n = args.worker
        print(json.dumps(worker(impl, div, int(n), args.reps, args.chunk_size, args.threads)))
        return

    sizes = args.sizes = sorted(args.sizes or ([256, 1024] if args.quick else [1024, 4096]))
    divs = args.divergences or (["forward_kl", "jsd"] if args.quick else list(DIVERGENCES))
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor() or platform.machine(),
    )
    torch_version = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True
    ).stdout.strip()
    print(
        f"# {cpu}, {os.cpu_count()} CPUs, python {platform.python_version()}, torch {torch_version}, "
        f"threads {args.threads}, V={V} H_s={H_S} H_t={H_T} fp32, chunk {args.chunk_size}, "
        f"{args.rounds} rounds x {args.reps} timed reps at N={max(sizes)}"
    )
    print(
        f"{'divergence':16} {'N':>5} {'naive MiB':>10} {'chunk MiB':>10} {'mem x':>6} {'naive s':>8} {'chunk s':>8} {'time x':>6} {'cpu x':>6}  loss rel.diff"
    )
    results = []
    t_start, load0 = time.time(), os.getloadavg()[0]
    for div in divs:
        for n in sizes:
            runs = {"naive": [], "chunked": []}
            for r in range(args.rounds):
                for impl in ("naive", "chunked") if r % 2 == 0 else ("chunked", "naive"):
                    runs[impl].append(run_child(impl, div, n, args))
            a, b = (merge(runs[impl]) for impl in ("naive", "chunked"))
            results += [a, b]
            diff = abs(a["loss"] - b["loss"]) / abs(a["loss"])
            print(
                f"{div:16} {n:5d} {a['peak_mib']:10.1f} {b['peak_mib']:10.1f} {a['peak_mib'] / b['peak_mib']:6.1f} "
                f"{a['time_s']:8.3f} {b['time_s']:8.3f} {b['time_s'] / a['time_s']:6.2f} {b['cpu_s'] / a['cpu_s']:6.2f}  {diff:.1e}",
                flush=True,
            )
    lo, hi = min(sizes), max(sizes)

    def get(impl, div, n):
        return next(r for r in results if r["impl"] == impl and r["divergence"] == div and r["n"] == n)

    def ratio(key, ns):
        return round(max(get("chunked", d, n)[key] / get("naive", d, n)[key] for d in divs for n in ns), 3)

    summary = {
        "memory_ratio": round(
            min(get("naive", d, hi)["peak_mib"] / get("chunked", d, hi)["peak_mib"] for d in divs), 2
        ),
        "growth": round(max(get("chunked", d, hi)["peak_mib"] / get("chunked", d, lo)["peak_mib"] for d in divs), 3),
        "time_ratio": ratio("time_s", [hi]),
        "time_ratio_all_n": ratio("time_s", sizes),
        "cpu_time_ratio": ratio("cpu_s", [hi]),
        "cpu_time_ratio_all_n": ratio("cpu_s", sizes),
        "n_small": lo,
        "n_large": hi,
        "chunk_size": args.chunk_size,
        "load_avg_before_after": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "wall_s": round(time.time() - t_start, 1),
        "results": results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

"""The writer step of the expand stage, and the shipped rewrites file (``expand.writer.cache_file``).

A rewrites file is JSONL. Line 1 is the provenance header::

    {"provenance": {"format": "potstill-expand-rewrites/1", "created": ISO time, "potstill_version": str,
                    "writers": [{"model", "sha256", ...}], "system_prompt": str | null,
                    "instructions": [{"name", "method", "template", "sha"}], "settings": {...}}}

then one row per rewrite: ``{"seed_id", "seed_sha", "instruction", "instruction_sha", "method", "raw",
"finish_reason", "writer"}`` (``raw`` is the writer's answer as given; it is cleaned when read, so a
better cleaner applies to shipped files too). A row is used for the seed prompt with that id and the
instruction with that hash, and only while the seed's text still hashes to ``seed_sha``.

Export what a run produced with ``python -m potstill.expand.rewrites RUN/expand OUT.jsonl`` (several
``RUN/expand`` directories merge into one file, e.g. one per seed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections import Counter
from pathlib import Path

from .. import __version__
from ..errors import UserError
from ..io import read_json, read_jsonl, write_json, write_jsonl
from ..progress import say
from .config import WriterSettings
from .writer import (
    WriterRunner,
    clean_rewrite,
    instruction_record,
    instruction_sha,
    make_writer_runner,
    reject_reason,
    seed_sha,
    seed_text,
    writer_identity,
    writer_jobs,
)

FORMAT = "potstill-expand-rewrites/1"


def read_cache_file(path: str | Path) -> tuple[dict, dict[tuple[str, str], dict]]:
    """``(provenance, {(seed_id, instruction_sha): row})`` of a rewrites file."""
    rows = read_jsonl(path)
    if not rows or "provenance" not in rows[0] or rows[0]["provenance"].get("format") != FORMAT:
        raise UserError(f"not a rewrites file (line 1 must be the provenance header of format {FORMAT})", str(path))
    keyed = {}
    for n, row in enumerate(rows[1:], 2):
        if not all(isinstance(row.get(k), str) for k in ("seed_id", "seed_sha", "instruction_sha", "raw")):
            raise UserError(f"line {n}: a rewrite row needs seed_id, seed_sha, instruction_sha and raw", str(path))
        keyed[(row["seed_id"], row["instruction_sha"])] = row
    return rows[0]["provenance"], keyed


def provenance(cfg: WriterSettings, rows: list[dict], seed: int) -> dict:
    """The header of the rewrites in ``rows``: who wrote them, from which instructions, when, with which potstill."""
    shas = {r["instruction_sha"] for r in rows}
    writers = []
    for r in rows:
        if r.get("writer") and r["writer"] not in writers:
            writers.append(r["writer"])
    return {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "potstill_version": __version__,
        "writers": writers,
        "system_prompt": cfg.system_prompt,
        "instructions": [
            {**i.model_dump(mode="json"), "sha": s}
            for i in cfg.instructions
            if (s := instruction_sha(i, cfg.system_prompt)) in shas
        ],
        "settings": {
            "max_new_tokens": cfg.max_new_tokens,
            "do_sample": cfg.do_sample,
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "seed": seed,
        },
    }


def run_writer(
    cfg: WriterSettings,
    records: list[dict],
    seed: int,
    out_dir: Path,
    work_dir: Path,
    runner: WriterRunner | None = None,
    base_dir: str | Path = ".",
) -> tuple[list[tuple], dict]:
    """Rewrite the chosen seed prompts; returns ``([(seed record, instruction, text, writer)], stats)``.

    Rewrites in ``cfg.cache_file`` (when it exists) are used as they are; the missing ones go to
    ``runner`` (default :func:`make_writer_runner`) with ``out_dir/writer`` and ``work_dir/writer``.
    Every rewrite used is written to ``out_dir/writer/rewrites.jsonl`` with ``provenance.json``.
    """
    jobs = writer_jobs(cfg, records, seed)
    cached: dict = {}
    if cfg.cache_file:
        path = Path(base_dir, cfg.cache_file)
        if path.exists():
            cached = read_cache_file(path)[1]
        else:
            say(f"  expand: rewrites file {path} not found: every rewrite is generated")
    rows: dict[tuple[str, str], dict] = {}
    todo, stale = [], 0
    for r, ins, sha in jobs:
        row = cached.get((r["id"], sha))
        if row is not None and row["seed_sha"] == seed_sha(seed_text(r)):
            rows[(r["id"], sha)] = row
        else:
            stale += row is not None
            todo.append((r, ins, sha))
    n_cached = len(rows)
    if todo:
        runner = runner or make_writer_runner(cfg, base_dir, seed=seed)
        identity = writer_identity(cfg, base_dir) if cfg.model else None
        asked = [instruction_record(r, ins, sha, cfg.system_prompt) for r, ins, sha in todo]
        answers = {g["id"]: g for g in runner(asked, Path(out_dir) / "writer", Path(work_dir) / "writer")}
        for (r, ins, sha), rec in zip(todo, asked):
            g = answers.get(rec["id"])
            if g is not None:
                rows[(r["id"], sha)] = {
                    "seed_id": r["id"],
                    "seed_sha": seed_sha(seed_text(r)),
                    "instruction": ins.name,
                    "instruction_sha": sha,
                    "method": ins.method,
                    "raw": g["text"],
                    "finish_reason": g.get("finish_reason"),
                    "writer": identity,
                }
    accepted, rejected, used = [], Counter(), []
    for r, ins, sha in jobs:
        row = rows.get((r["id"], sha))
        if row is None:
            continue
        used.append(row)
        text, more = clean_rewrite(row["raw"])
        reason = reject_reason(text, more, row.get("finish_reason"), seed_text(r), ins, cfg)
        if reason:
            rejected[reason] += 1
        else:
            accepted.append((r, ins, text, row.get("writer")))
    write_jsonl(Path(out_dir) / "writer" / "rewrites.jsonl", used)
    write_json(Path(out_dir) / "writer" / "provenance.json", provenance(cfg, used, seed))
    stats = {
        "asked": len(jobs),
        "from_cache_file": n_cached,
        "stale_in_cache_file": stale,
        "sent_to_writer": len(todo),
        "unanswered": len(jobs) - len(used),
        "rejected": dict(sorted(rejected.items())),
        "accepted": len(accepted),
    }
    return accepted, stats


def export_rewrites(expand_dirs: str | Path | list, path: str | Path) -> int:
    """Write the rewrites one or more expand stages used (``DIR/writer``) as one rewrites file; returns the row count.

    Several runs (other seeds choose other prompts) merge into a file that covers each of them: a
    (seed prompt, instruction) pair is kept once, from the first run that has it, and the header lists
    every writer and instruction once, with each run's settings under ``runs``.
    """
    dirs = [expand_dirs] if isinstance(expand_dirs, (str, Path)) else list(expand_dirs)
    rows: dict[tuple[str, str], dict] = {}
    headers = []
    for d in dirs:
        src = Path(d) / "writer"
        if not (src / "rewrites.jsonl").exists():
            raise UserError("no writer rewrites here (was expand.writer enabled?)", str(src))
        headers.append(read_json(src / "provenance.json"))
        for row in read_jsonl(src / "rewrites.jsonl"):
            rows.setdefault((row["seed_id"], row["instruction_sha"]), row)
    header = dict(headers[0])
    if len(headers) > 1:
        header["writers"] = _once(w for h in headers for w in h["writers"])
        header["instructions"] = _once(i for h in headers for i in h["instructions"])
        header["runs"] = [{"expand_dir": str(d), "settings": h["settings"]} for d, h in zip(dirs, headers)]
    return write_jsonl(path, [{"provenance": header}, *rows.values()]) - 1


def _once(items) -> list:
    out: list = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m potstill.expand.rewrites",
        description="Export an expand stage's writer rewrites as a rewrites file "
        "(expand.writer.cache_file) with its provenance header.",
    )
    parser.add_argument(
        "expand_dir", nargs="+", help="The expand stage's output directory (RUN/expand); several are merged."
    )
    parser.add_argument("out", help="The rewrites file to write (JSONL).")
    args = parser.parse_args(argv)
    try:
        n = export_rewrites(args.expand_dir, args.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"rewrites": n, "path": args.out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

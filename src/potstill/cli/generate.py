"""``potstill generate``: the teacher answers prompts.

Two forms:

* ``potstill generate CONFIG [KEY=VALUE...] [--force STAGE] [--shard I/N]``: the pipeline's generate stage
  (needs the prompts stage done in the same run directory).
* ``potstill generate --teacher openai:NAME --base-url URL --prompts FILE --out DIR
  [--concurrency N] [--rpm N] [--tpm N] [--max-cost USD] ...``: no config file; writes
  ``DIR/generations.jsonl``, ``DIR/failed.jsonl`` and ``DIR/stats.json``, keeping its answer
  cache in ``DIR/cache.sqlite`` (rerun the same command to resume or retry failures).

``--shard I/N`` (local and ``vllm:`` teachers): data-parallel generation. Process ``I`` of ``N``
answers its share of the prompts (by a hash of each id) into the stage's work folder and writes no
stage; run ``N`` of them on one or several machines sharing the run directory, then the same
command without ``--shard`` merges the finished parts, generates whatever is missing and writes the
stage. Under ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE`` > 1) with no ``--shard``, each
process takes ``RANK/WORLD_SIZE``.

Prompts longer than the teacher's context less ``max_new_tokens`` are dropped (config form: see
``prompts.max_prompt_tokens`` / ``prompts.too_long``; direct form: a warning counts them).

Exit codes: 0 done, every prompt answered; 2 a user error in one line (bad file, unreachable URL,
bad key, unknown model, more failed prompts than ``teacher.max_failed_share``: nothing kept but the
answer cache and the failures' list); 3 finished short, one line says why and a rerun continues:
stopped by ``--max-cost``, or "N prompts failed" (after ``max_attempts``; they are in
``failed.jsonl``: rerun to retry only them, answers are cached).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationError

from .. import api
from ..config import TeacherConfig, load_config
from ..data.length import drop_too_long
from ..data.load import SourceSpec, drop_empty, load_source
from ..errors import Incomplete, UserError
from ..io import read_json
from ..models import load_tokenizer, model_hash
from ..progress import say
from ..teachers.generate import parse_shard, run_generate, run_generate_shard
from ..teachers.limits import context_limit
from ..teachers.spec import teacher_spec

HELP = "the teacher answers the training prompts (local model: batched; API: concurrent, cached, resumable)"

# option -> TeacherConfig field
FLAGS = {
    "teacher": "model",
    "base_url": "base_url",
    "api_key_env": "api_key_env",
    "concurrency": "concurrency",
    "rpm": "rpm",
    "tpm": "tpm",
    "max_cost": "max_cost",
    "timeout": "timeout_s",
    "max_attempts": "max_attempts",
    "max_new_tokens": "max_new_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_logprobs": "top_logprobs",
    "tokenizer": "tokenizer",
    "batch_size": "batch_size",
    "backoff_base": "backoff_base_s",
    "backoff_max": "backoff_max_s",
    "max_failed_share": "max_failed_share",
}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "generate",
        help=HELP,
        description=HELP,
        epilog="Give a CONFIG, or --teacher, --prompts and --out. Exit codes: 2 user error, "
        "3 finished short (max-cost reached, or prompts failed: rerun to retry them).",
    )
    p.add_argument("config", nargs="?", help="the run's YAML config file")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides, e.g. teacher.concurrency=32"
    )
    p.add_argument(
        "--force", action="append", default=[], metavar="STAGE", help="redo STAGE even if its inputs did not change"
    )
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="answer only part I of N of the prompts (data-parallel; "
        "rerun without --shard to merge); default RANK/WORLD_SIZE under torchrun",
    )
    p.set_defaults(func=main)
    g = p.add_argument_group("without a config file")
    g.add_argument("--teacher", metavar="MODEL", help="openai:NAME, anthropic:NAME, or a local model directory")
    g.add_argument("--base-url", metavar="URL", help="API endpoint, e.g. http://127.0.0.1:8000/v1")
    g.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="environment variable with the API key (default OPENAI_API_KEY / ANTHROPIC_API_KEY)",
    )
    g.add_argument("--prompts", metavar="FILE", help="JSONL (or CSV/Parquet) with 'prompt' or 'messages' (and 'id')")
    g.add_argument("--out", metavar="DIR", help="output directory")
    g.add_argument("--concurrency", metavar="N", type=int, help="requests in flight (default 8)")
    g.add_argument("--rpm", metavar="N", type=float, help="most requests per minute")
    g.add_argument("--tpm", metavar="N", type=float, help="most tokens per minute")
    g.add_argument(
        "--max-cost", type=float, metavar="USD", help="stop cleanly at this API spend (needs --price-in/--price-out)"
    )
    g.add_argument("--price-in", type=float, metavar="USD", help="USD per million prompt tokens")
    g.add_argument("--price-out", type=float, metavar="USD", help="USD per million completion tokens")
    g.add_argument("--timeout", type=float, metavar="S", help="per-request timeout in seconds (default 60)")
    g.add_argument(
        "--backoff-base", metavar="S", type=float, help="first retry delay in seconds (default 1; doubles, with jitter)"
    )
    g.add_argument("--backoff-max", metavar="S", type=float, help="longest retry delay in seconds (default 60)")
    g.add_argument("--max-attempts", metavar="N", type=int, help="attempts per prompt before failed.jsonl (default 6)")
    g.add_argument(
        "--max-failed-share",
        metavar="S",
        type=float,
        help="stop (exit 2) when more than this share of the prompts failed (default 0.01; fewer: exit 3)",
    )
    g.add_argument("--max-new-tokens", metavar="N", type=int, help="most tokens per answer (default 64)")
    g.add_argument("--temperature", metavar="T", type=float, help="sample at this temperature (default: greedy)")
    g.add_argument("--top-p", metavar="P", type=float, help="nucleus mass when sampling")
    g.add_argument("--top-logprobs", type=int, metavar="K", help="record the top-K log-probs per token")
    g.add_argument("--tokenizer", metavar="DIR", help="local tokenizer matching the API model (log-probs as token ids)")
    g.add_argument("--batch-size", metavar="N", type=int, help="batch size of a local teacher")
    g.add_argument("--seed", metavar="N", type=int, default=0, help="seed sent to the API / used for sampling")
    g.add_argument("--cache", metavar="FILE", help="SQLite answer cache (default DIR/cache.sqlite)")


def main(args) -> int:
    if args.teacher is None and args.prompts is None and args.out is None:
        if args.config is None:
            raise UserError("give a CONFIG file, or --teacher, --prompts and --out")
        shard = shard_arg(args)
        if shard is not None:
            api.generate_shard(args.config, shard, args.overrides, args.force)
            say(
                f"generate: shard {shard[0]}/{shard[1]} done; once every shard is done, run "
                f"`potstill generate {args.config}` without --shard to merge them"
            )
            return 0

        cfg = load_config(args.config, list(args.overrides))
        api.generate(cfg, force=args.force)
        stage = cfg.run_path / "generate"
        again = " ".join(["potstill generate", args.config, *args.overrides, "--force generate"])
        failed_exit(read_json(stage / "stats.json"), stage / "failed.jsonl", f"`{again}`")
        say("generate: done")
        return 0
    if args.config is not None:
        raise UserError("give either a CONFIG file or --teacher/--prompts/--out, not both")
    missing = [f"--{n}" for n in ("teacher", "prompts", "out") if getattr(args, n) is None]
    if missing:
        raise UserError(f"missing {', '.join(missing)} (or give a CONFIG file)")
    stats = direct(args)
    if "shard" in stats:
        say(
            f"generate: shard {stats['shard']}: {stats['records']} answers ({stats['generated']} generated now); "
            "rerun without --shard to merge"
        )
        return 0
    say(f"generate: {stats['answered']} answered, {stats['failed']} failed → {args.out}")
    failed_exit(stats, Path(args.out) / "failed.jsonl", "the same command")
    return 0


def failed_exit(stats: dict, failed_path: Path, rerun: str) -> None:
    """Exit code 3 (:class:`Incomplete`, one line) when the finished generate stage has failed prompts."""
    if stats.get("failed"):
        total = stats["failed"] + stats.get("answered", 0) + stats.get("unanswered", 0)
        raise Incomplete(
            f"generate finished, {stats['failed']} of {total} prompts failed (listed with their errors "
            f"in {failed_path}); rerun {rerun} to retry them (answered prompts are cached)"
        )


def shard_arg(args) -> tuple[int, int] | None:
    """``--shard I/N``, else ``(RANK, WORLD_SIZE)`` under torchrun / accelerate launch, else None."""

    if args.shard is not None:
        return parse_shard(args.shard)
    world = os.environ.get("WORLD_SIZE", "1")
    if world.isdigit() and int(world) > 1:
        return parse_shard(f"{os.environ.get('RANK', '0')}/{world}", what="RANK/WORLD_SIZE")
    return None


def teacher_config(args):
    """A validated TeacherConfig from the command-line options; one-line error naming the option."""

    data = {field: getattr(args, flag) for flag, field in FLAGS.items() if getattr(args, flag) is not None}
    if args.temperature is not None:
        data["do_sample"] = True
    try:
        return TeacherConfig.model_validate(data)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            field = str(e["loc"][0]) if e["loc"] else "teacher"
            flag = next((f for f, fld in FLAGS.items() if fld == field), field)
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"--{flag.replace('_', '-')}: {msg} (got {e.get('input')!r})")
        raise UserError("\n".join(lines)) from None


def direct(args) -> dict:
    """The config-less form: load prompts, answer them, write DIR/generations.jsonl and DIR/failed.jsonl."""

    cfg = teacher_config(args)
    for name in ("price_in", "price_out"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0")
    records, n_empty = drop_empty(load_source(SourceSpec(path=str(Path(args.prompts).resolve())), Path.cwd()))
    if n_empty:
        say(f"  [yellow]warning[/]: skipped {n_empty} empty prompts")
    spec = teacher_spec(cfg, lambda p: Path(p).expanduser().resolve())
    if spec.is_local:
        model_hash(spec.path)  # one-line error unless it is a model
    records = drop_too_long_direct(cfg, spec, records)
    if not records:
        raise UserError("no prompts", args.prompts)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError("--out is an existing file, not a directory", str(out))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the --out directory ({e.strerror or e})", str(out)) from None
    work = out / ".work"
    work.mkdir(exist_ok=True)
    shard = shard_arg(args)
    if shard is not None:
        return run_generate_shard(cfg, spec, records, work, shard, args.seed)
    return run_generate(
        cfg,
        spec,
        records,
        out,
        work,
        args.seed,
        prices=(args.price_in, args.price_out),
        cache_path=Path(args.cache) if args.cache else out / "cache.sqlite",
    )


def drop_too_long_direct(cfg, spec, records: list[dict]) -> list[dict]:
    """The prompts that fit a local teacher's context less max_new_tokens (a warning counts the others)."""

    limit, why = context_limit(cfg, spec)
    if limit is None:
        return records

    kept, n_long = drop_too_long(records, load_tokenizer(spec.model_dir()), limit, "drop", why=why)
    if n_long:
        say(f"  [yellow]warning[/]: skipped {n_long} prompts longer than {limit} tokens ({why})")
    return kept

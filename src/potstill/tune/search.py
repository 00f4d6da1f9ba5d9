"""`potstill tune`: a seeded Optuna (TPE) search over training settings, scored on the validation split.

The split is ``validation``, or ``validation_expanded`` when ``expand.validation`` makes it
(:func:`objective_split`).

The teacher's stages (prompts, expand, generate, student, signals) run once, in the run directory.
Each trial is a child run, ``RUN/tune/<study>/trial-NNNN/``: its folders of those stages are links to
the parent's (so their provenance is the parent's record, unchanged), its ``config.yaml`` is the
run's config with the trial's values, and it runs only ``train`` (``tune.method``) and ``eval`` on
that split. A trial whose settings change a shared stage (a signal store captured at
another temperature) redoes that stage in its own folder.

The study is kept in ``RUN/tune/study.db`` (SQLite): a rerun finishes the trials still missing, and a
trial killed mid-way is tried again with the same values in the same folder (its training resumes
from its checkpoint). A study is named by what its figures depend on (method, metric, space, the
training and evaluation settings, the shared stages): change one and a new study starts.
``RUN/tune/trials.jsonl`` lists its trials and ``RUN/tune/best.yaml`` the winning overrides.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import yaml

from .. import pipeline
from ..config import RunConfig, apply_overrides, config_from_dict, value_at
from ..context import RunContext, hashed
from ..data.config import EXPANDED_VALIDATION
from ..errors import UserError
from ..expand.config import VALIDATION_FOLDER
from ..io import read_json, sha256_json, write_json, write_jsonl, write_text
from ..progress import say
from .config import Distribution

SHARED = ("prompts", "expand", VALIDATION_FOLDER, "generate", "student", "signals")  # the folders before train
MAX_FAILS_IN_A_ROW = 3  # a user error in every trial is not the settings: stop and say so

DEFAULT_SPACE: dict[str, dict[str, dict]] = {
    "kd": {
        "train.lr": {"low": 5e-5, "high": 5e-3, "log": True},
        "train.kd.temperature": {"low": 1.0, "high": 4.0},
        "train.kd.alpha": {"low": 0.2, "high": 1.0},
        "train.kd.divergence": {"choices": ["forward_kl", "reverse_kl", "jsd"]},
    },
    "sft": {
        "train.lr": {"low": 5e-5, "high": 5e-3, "log": True},
        "train.warmup_ratio": {"low": 0.0, "high": 0.2},
        "train.weight_decay": {"low": 0.0, "high": 0.1},
    },
}


def objective_split(cfg: RunConfig) -> str:
    """The split trials are scored on: ``validation_expanded`` when ``expand.validation`` makes it (plain
    validation saturates on template-like data, where every setting scores ~100% of the teacher), else
    ``validation``."""
    return EXPANDED_VALIDATION if cfg.expand.validation else "validation"


def default_space(cfg: RunConfig, method: str) -> dict[str, Distribution]:
    """The space searched when ``tune.space`` is empty. For kd, divergences other than forward KL need
    the live teacher (``train.kd.signal: live``), and a signal store is captured at one temperature."""
    space = dict(DEFAULT_SPACE[method])
    if method == "kd" and cfg.train.kd.signal != "live":
        space.pop("train.kd.divergence")
    if method == "kd" and cfg.train.kd.signal == "store":
        space.pop("train.kd.temperature")
    return {k: Distribution(**v) for k, v in space.items()}


def _optuna():
    try:
        import optuna  # defers optuna (an optional extra)
    except ImportError:
        raise UserError("potstill tune needs Optuna: pip install potstill[tune]") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def derive(cfg: RunConfig, overrides: list[str], source: str) -> RunConfig:
    """``cfg`` with dotted ``key=value`` overrides applied and validated again."""
    data = apply_overrides(cfg.model_dump(mode="json", exclude_defaults=True), overrides)
    return config_from_dict(data, base_dir=cfg.base_dir, source=source)


def as_override(key: str, value) -> str:
    return f"{key}={json.dumps(value)}"  # JSON is YAML: the value comes back as it was


def suggest(trial, key: str, dist: Distribution, current):
    """The trial's value of one key: a choice, an integer for an integer setting, else a float."""
    if dist.choices is not None:
        return trial.suggest_categorical(key, dist.choices)
    if isinstance(current, int):
        step = int(dist.step or 1)
        return trial.suggest_int(key, int(dist.low), int(dist.high), step=step, log=dist.log)
    return trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)


def link_shared(parent: Path, child: Path) -> None:
    """The parent's finished shared stages (and its answer caches) seen from the trial's run directory.

    A folder the trial already has (a stage it had to redo) is kept. Where links are not possible the
    folder is copied."""
    (parent / ".cache").mkdir(exist_ok=True)
    for name in (*SHARED, ".cache"):
        src, dst = parent / name, child / name
        if not src.is_dir() or dst.exists() or dst.is_symlink():
            continue
        try:
            os.symlink(os.path.relpath(src, child), dst, target_is_directory=True)
        except OSError:
            shutil.copytree(src, dst)


def study_name(cfg: RunConfig, parent: RunContext, space: dict[str, Distribution]) -> str:
    t = cfg.tune
    key = {
        "method": t.method,
        "metric": t.metric,
        "seed": t.seed,
        "space": {k: d.model_dump(mode="json", exclude_defaults=True) for k, d in sorted(space.items())},
        "train": cfg.train.model_dump(mode="json", exclude={"methods"}, exclude_defaults=True),
        "eval": cfg.eval.model_dump(mode="json", exclude={"splits", "latency"}, exclude_defaults=True),
        "student": hashed(cfg.student),
        "stages": {s: parent.hashes[s] for s in SHARED if s in parent.hashes},
        "seed_run": cfg.seed,
    }
    return f"{t.method}-{sha256_json(key)[:10]}"


def run_trial(cfg: RunConfig, parent: RunContext, root: Path, number: int, params: dict) -> tuple[float, Path]:
    """Train and evaluate one trial in ``root``; returns its figure on :func:`objective_split`."""
    method, metric, split = cfg.tune.method, cfg.tune.metric, objective_split(cfg)
    overrides = [as_override(k, v) for k, v in params.items()]
    tcfg = derive(
        cfg,
        [f"run_dir={json.dumps(str(root))}", f"train.methods=[{method}]", f"eval.splits=[{split}]", *overrides],
        source=f"trial {number}",
    )
    ctx = pipeline.open_run(tcfg)
    link_shared(parent.run_dir.root, ctx.run_dir.root)
    write_json(
        root / "trial.json",
        {
            "trial": number,
            "parent": str(parent.run_dir.root),
            "method": method,
            "split": split,
            "params": params,
            "overrides": overrides,
        },
    )
    pipeline.run_stages(ctx, ["signals", "train", "eval"])
    results = read_json(ctx.path("eval") / "results.json")
    value = results["splits"][split]["models"][method][metric]
    if value is None:
        raise UserError(f"the student's {split} {metric} is undefined (the teacher scores 0): use tune.metric=score")
    return float(value), root


def trial_rows(study, optuna, root: Path) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        state = t.state.name.lower()
        if t.state == optuna.trial.TrialState.FAIL and "error" not in t.user_attrs:
            state = "interrupted"
        rows.append(
            {
                "trial": t.number,
                "state": state,
                "value": t.value,
                "params": dict(t.params),
                "dir": t.user_attrs.get("dir") and str(Path(t.user_attrs["dir"]).relative_to(root.parent)),
                "error": t.user_attrs.get("error"),
                "duration_s": round(t.duration.total_seconds(), 3) if t.duration else None,
            }
        )
    return rows


def best_of(rows: list[dict]) -> dict | None:
    done = [r for r in rows if r["state"] == "complete"]
    return max(done, key=lambda r: (r["value"], -r["trial"])) if done else None


def write_summary(cfg: RunConfig, name: str, rows: list[dict], root: Path) -> dict | None:
    """``trials.jsonl`` (every trial of the study) and ``best.yaml`` (the winner), each written atomically."""
    split = objective_split(cfg)
    write_jsonl(root / "trials.jsonl", [{"study": name, "split": split, **r} for r in rows])
    best = best_of(rows)
    if best is None:
        return None
    doc = {
        "study": name,
        "method": cfg.tune.method,
        "metric": cfg.tune.metric,
        "split": split,
        "trial": best["trial"],
        "value": best["value"],
        "dir": best["dir"],
        "overrides": best["params"],
        "command_line": [as_override(k, v) for k, v in best["params"].items()],
    }
    write_text(root / "best.yaml", yaml.safe_dump(doc, sort_keys=False))
    return doc


def finished(study, optuna) -> int:
    """Trials that count towards ``tune.trials``: completed, or failed with a user error (not interrupted)."""
    states = optuna.trial.TrialState
    return sum(
        t.state == states.COMPLETE or (t.state == states.FAIL and "error" in t.user_attrs)
        for t in study.get_trials(deepcopy=False)
    )


def retry_interrupted(study, optuna) -> None:
    """A trial left running by a killed process: marked interrupted, and the same values queued in the same folder."""
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.enqueue_trial(t.params, user_attrs={"dir": t.user_attrs["dir"]} if "dir" in t.user_attrs else None)
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        say(f"  trial {t.number} was interrupted: tried again with the same values")


def tune(cfg: RunConfig, force: set[str] | None = None) -> dict:
    """Run the search (see the module doc); returns the study's name, its trials, the best one and the paths."""
    optuna = _optuna()
    t = cfg.tune
    space = t.space or default_space(cfg, t.method)
    # the run directory keeps the config as given; the shared stages run as for the searched method alone
    # (no stage before train hashes train.methods: a later `potstill run` skips them)
    opened = pipeline.open_run(cfg, force)
    parent = replace(opened, cfg=derive(cfg, [f"train.methods=[{t.method}]"], source="tune"))
    pipeline.run_all(parent, until=pipeline.STAGE_NAMES[pipeline.STAGE_NAMES.index("train") - 1])
    split = objective_split(cfg)
    if not parent.split(split):
        raise UserError(
            f"the {split} split is empty, and tune scores each trial on it: hold some prompts out "
            "with prompts.validation (e.g. 0.1)"
        )
    root = parent.run_dir.root / "tune"
    root.mkdir(exist_ok=True)
    name = study_name(cfg, parent, space)
    study = optuna.create_study(
        storage=f"sqlite:///{root / 'study.db'}", study_name=name, direction="maximize", load_if_exists=True
    )
    seed = cfg.seed if t.seed is None else t.seed
    # seeded, and offset by the trials already there: a rerun does not draw the first trials' values again
    study.sampler = optuna.samplers.TPESampler(
        seed=seed + len(study.trials), n_startup_trials=min(10, max(1, t.trials // 2))
    )
    retry_interrupted(study, optuna)
    current = cfg.model_dump(mode="json")
    started, fails = time.monotonic(), 0
    why = " (expand.validation)" if split == EXPANDED_VALIDATION else ""
    say(f"tune: study {name}, {finished(study, optuna)}/{t.trials} trials done, {t.metric} on {split}{why}")
    while finished(study, optuna) < t.trials:
        if t.timeout_s is not None and time.monotonic() - started > t.timeout_s:
            say(f"tune: {t.timeout_s:g}s timeout reached; rerun to go on")
            break
        trial = study.ask()
        params = {k: suggest(trial, k, d, value_at(current, k)) for k, d in space.items()}
        folder = trial.user_attrs.get("dir") or str(root / name / f"trial-{trial.number:04d}")
        trial.set_user_attr("dir", folder)
        say(f"[cyan]▶[/] trial {trial.number}: " + " ".join(as_override(k, v) for k, v in params.items()))
        try:
            value, _ = run_trial(cfg, parent, Path(folder), trial.number, params)
        except UserError as e:
            line = str(e).splitlines()[0].removeprefix(f"trial {trial.number}: ")
            trial.set_user_attr("error", line)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            say(f"[red]✗[/] trial {trial.number} failed: {line}")
            fails += 1
            if fails >= MAX_FAILS_IN_A_ROW:
                raise UserError(f"{fails} trials in a row failed; the last, trial {trial.number}: {line}") from None
            continue
        fails = 0
        study.tell(trial, value)
        say(f"[green]✓[/] trial {trial.number}: {t.metric} {value:.3f}")
        write_summary(cfg, name, trial_rows(study, optuna, root), root)
    rows = trial_rows(study, optuna, root)
    best = write_summary(cfg, name, rows, root)
    return {
        "study": name,
        "metric": t.metric,
        "method": t.method,
        "split": split,
        "trials": rows,
        "best": best,
        "paths": {
            name: str(root / f)
            for name, f in (("study", "study.db"), ("trials", "trials.jsonl"), ("best", "best.yaml"))
        },
    }

"""The pipeline: config → prompts → generate → train (one student per method) → eval → measure → report.

Each stage's inputs (its config section, the hashes of the models and data it reads, and the
hashes of the upstream stages) decide whether it runs again; see :mod:`potstill.run_dir`.
"""

from __future__ import annotations

import platform
from pathlib import Path

from .config import RunConfig, dump_config
from .distributed import is_main_process
from .errors import UserError
from .io import read_json, read_jsonl, sha256_dir, sha256_file, write_text
from .models import check_model_dir
from .progress import say
from .run_dir import RunDir

STAGES = ("prompts", "generate", "train", "eval", "measure", "route", "report")
MODEL_FILES = ("*.json", "*.safetensors", "*.bin", "*.model", "*.txt", "*.jinja")


def model_hash(path: Path, init: str = "pretrained") -> str:
    check_model_dir(path, need_weights=(init == "pretrained"))
    return sha256_dir(path, MODEL_FILES)


def source_hash(cfg: RunConfig, path: str) -> str:
    p = cfg.resolve(path)
    if p.is_dir():
        return sha256_dir(p, ("**/*",))
    if not p.exists():
        raise UserError("prompt file not found", str(p))
    return sha256_file(p)


class Pipeline:
    """Runs the stages of one config in its run directory; each method returns its stage's hash."""

    def __init__(self, cfg: RunConfig, force: set[str] | None = None):
        bad = set(force or ()) - set(STAGES)
        if bad:
            raise UserError(f"unknown stage '{sorted(bad)[0]}' for --force (stages: {', '.join(STAGES)})")
        self.cfg = cfg
        self.run_dir = RunDir(cfg.run_path, force)
        if is_main_process():  # under a multi-process launch only rank 0 writes the run directory
            write_text(self.run_dir.root / "config.yaml", dump_config(cfg))
        self.hashes: dict[str, str] = {}
        self.terms = None
        from .teachers.api import parse_teacher

        self.api = parse_teacher(cfg.teacher.model)

    # -- stages ---------------------------------------------------------------------------
    def prompts(self) -> str:
        from .data.stage import hashed_prompts_config, run_prompts
        from .teachers.context import prompt_limit

        cfg = self.cfg
        limit = prompt_limit(cfg)
        sources = [s.path for s in (*cfg.prompts.sources, *cfg.prompts.test, *cfg.prompts.ood)]
        inputs = {"config": hashed_prompts_config(cfg.prompts, limit),
                  "files": {s: source_hash(cfg, s) for s in sources}}

        def build(out: Path, work: Path) -> dict:
            stats = run_prompts(cfg.prompts, cfg.base_dir, out, limit)
            say("  prompts: " + ", ".join(f"{k}={v}" for k, v in stats.items() if isinstance(v, int))
                + "; dropped " + ", ".join(f"{k}={v}" for k, v in stats.get("dropped", {}).items()))
            return stats

        self.hashes["prompts"] = self.run_dir.run("prompts", inputs, build)
        return self.hashes["prompts"]

    def teacher_ident(self) -> str:
        """What stands for the teacher in stage hashes: its files' hash, or an API's provider/model/endpoint."""
        from .teachers.api import teacher_identity

        if self.api:
            return teacher_identity(self.api[0], self.api[1], self.cfg.teacher.base_url)
        return model_hash(self.teacher_dir())

    def teacher_dir(self) -> Path | None:
        """The local teacher's model directory, resolved against the config file (DIR of ``vllm:DIR``);
        None for an API teacher."""
        return self.cfg.teacher_dir()

    def teacher_config(self):
        """The teacher section with paths resolved against the config file."""
        cfg = self.cfg
        if self.api and cfg.teacher.tokenizer:
            return cfg.teacher.model_copy(update={"tokenizer": str(cfg.resolve(cfg.teacher.tokenizer))})
        return cfg.teacher

    def _generate(self, teacher_cfg, records: list[dict], out: Path, work: Path) -> dict:
        from .teachers.stage import run_generate

        cfg = self.cfg
        teacher = self.teacher_dir()
        cache = None
        if self.api:  # one answer cache per run: a rerun never pays twice for the same request
            cache = cfg.resolve(cfg.teacher.cache) if cfg.teacher.cache else self.run_dir.root / ".cache" / "teacher-api.sqlite"
        prices = (cfg.prices.teacher.usd_per_1m_input_tokens, cfg.prices.teacher.usd_per_1m_output_tokens)
        return run_generate(teacher_cfg, teacher, records, out, work, cfg.seed, prices=prices, cache_path=cache)

    def generate(self, shard: tuple[int, int] | None = None) -> str:
        """The generate stage; with ``shard=(I, N)`` only that data-parallel part of it
        (:func:`potstill.teachers.stage.run_generate_shard`): the stage is written by a later run
        without ``shard``, which merges the finished parts."""
        from .teachers.stage import hashed_teacher_config

        cfg = self.cfg
        if getattr(self, "terms", None) is None:  # `potstill generate` alone: the terms gate still applies
            from .terms.gate import gate, preflight_terms

            self.terms = preflight_terms(cfg, self.run_dir.root, teacher_hash=self.teacher_ident(), say=say,
                                         decision=gate(cfg))
        inputs = {"config": hashed_teacher_config(cfg.teacher), "teacher": self.teacher_ident(),
                  "prompts": self._need("prompts"), "seed": cfg.seed}
        records = read_jsonl(self.run_dir.path("prompts") / "train.jsonl")
        if shard is not None:
            return self._generate_shard(inputs, records, shard)
        self.hashes["generate"] = self.run_dir.run(
            "generate", inputs, lambda out, work: self._generate(self.teacher_config(), records, out, work))
        return self.hashes["generate"]

    def _generate_shard(self, inputs: dict, records: list[dict], shard: tuple[int, int]) -> str:
        from .io import sha256_json
        from .teachers.stage import run_generate_shard

        h = sha256_json(inputs)
        if "generate" not in self.run_dir.force and self.run_dir.done_hash("generate") == h:
            say("[green]✓[/] generate: up to date, skipped")
            return h
        s = run_generate_shard(self.teacher_config(), self.teacher_dir(), records, self.run_dir.work("generate", h),
                               shard, self.cfg.seed)
        say(f"  generate: shard {s['shard']}: {s['records']} answers ({s['generated']} generated now) in {s['path']}")
        return h

    def train(self, method: str) -> str:
        from .terms.gate import terms_provenance
        from .train.stage import train_student

        cfg = self.cfg
        stage = f"students/{method}"
        student = cfg.resolve(cfg.student.model)
        inputs = {"method": method, "train": cfg.train.model_dump(mode="json"),
                  "student": cfg.student.model_dump(mode="json"), "student_hash": model_hash(student, cfg.student.init),
                  "generate": self._need("generate"), "seed": cfg.seed}
        if method == "kd":
            inputs["teacher"] = self.teacher_ident()
            if cfg.train.kd.signal == "store":  # offline KD: the teacher's signals captured once, then trained from
                if cfg.train.kd.store:
                    inputs["signals"] = source_hash(cfg, str(Path(cfg.train.kd.store) / "manifest.json"))
                else:
                    from .signals.stage import run_capture

                    run_capture(cfg, self.run_dir.force)
                    inputs["signals"] = self.run_dir.done_hash("signals")
        teacher_name = cfg.teacher.model if self.api else str(self.teacher_dir())
        provenance = {"teacher": teacher_name, "teacher_hash": self.teacher_ident(),
                      "student_base": str(student), "student_base_hash": inputs["student_hash"],
                      "prompts_hash": self._need("prompts"), "generations_hash": inputs["generate"],
                      "terms": terms_provenance(cfg, getattr(self, "terms", None))}

        def build(out: Path | None, work: Path) -> dict:  # out: None on the helper ranks of a multi-process launch
            return train_student(method, cfg, self.pairs(), out, work, provenance=provenance)

        self.hashes[stage] = self.run_dir.run(stage, inputs, build, all_ranks=True)  # every rank trains
        return self.hashes[stage]

    def pairs(self) -> list[dict]:
        """(prompt, teacher answer) pairs for training, joined on id."""
        prompts = read_jsonl(self.run_dir.path("prompts") / "train.jsonl")
        gens = {g["id"]: g for g in read_jsonl(self.run_dir.path("generate") / "generations.jsonl")}
        return [{"id": p["id"], "messages": p["messages"], "response_text": gens[p["id"]]["text"],
                 "response_token_ids": gens[p["id"]].get("token_ids"), "finish_reason": gens[p["id"]]["finish_reason"],
                 "top_logprobs": gens[p["id"]].get("top_logprobs")}
                for p in prompts if p["id"] in gens]

    def models(self) -> dict[str, dict]:
        """The models compared at evaluation: teacher first, then each student, then the floor."""
        cfg = self.cfg
        teacher_path = cfg.teacher.model if self.api else self.teacher_dir()  # evaluated with transformers
        models = {"teacher": {"path": teacher_path, "role": "teacher", "method": None, "dtype": cfg.teacher.dtype,
                              "api": bool(self.api)}}
        for m in cfg.train.methods:
            models[m] = {"path": self.run_dir.path(f"students/{m}"), "role": "student", "method": m}
        if cfg.eval.include_floor:
            models["floor"] = {"path": cfg.resolve(cfg.student.model), "role": "floor", "method": None,
                               "init": cfg.student.init, "dtype": cfg.student.dtype}
        return models

    def eval_splits(self) -> dict[str, list[dict]]:
        splits = {}
        for s in self.cfg.eval.splits:
            rows = read_jsonl(self.run_dir.path("prompts") / f"{s}.jsonl")
            if self.cfg.eval.max_examples:
                rows = rows[: self.cfg.eval.max_examples]
            if rows:
                splits[s] = rows
        if not splits:
            raise UserError(f"no prompts in the evaluation splits {self.cfg.eval.splits}")
        return splits

    def evaluate(self) -> str:
        from .evaluate.stage import run_eval

        cfg = self.cfg
        inputs = {"config": cfg.eval.model_dump(mode="json", exclude={"latency"}), "prompts": self._need("prompts"),
                  "students": {m: self._need(f"students/{m}") for m in cfg.train.methods},
                  "teacher": self.teacher_ident(), "floor": cfg.student.model_dump(mode="json"), "seed": cfg.seed}
        js = cfg.eval.judge_settings()
        if js is not None and js.model is not None:
            from .teachers.api import parse_teacher

            inputs["judge"] = None if parse_teacher(js.model) else model_hash(cfg.resolve(js.model))

        def build(out: Path, work: Path) -> dict:
            from .evaluate.contamination import check_contamination, contamination_report

            splits = self.eval_splits()
            train = read_jsonl(self.run_dir.path("prompts") / "train.jsonl")
            contamination = contamination_report(splits, train)
            lines = check_contamination(contamination, cfg.eval.contamination_threshold, cfg.eval.force_contaminated)
            for line in lines:
                say(f"  [yellow]warning[/]: contamination: {line}")
            answers = {"teacher": self._api_answers(splits, work)} if self.api else {}
            judge, judge_model = self._judge(work)
            results = run_eval(cfg.eval, self.models(), splits, out, work, cfg.seed, answers=answers, judge=judge,
                               judge_model=judge_model, contamination=contamination, warnings=lines)
            for w in results["warnings"]:
                say(f"  [yellow]warning[/]: {w['message']}")
            return {"splits": list(results["splits"]), "warnings": len(results["warnings"])}

        self.hashes["eval"] = self.run_dir.run("eval", inputs, build)
        return self.hashes["eval"]

    def _judge(self, work: Path):
        """The eval judge as ``(JudgeFn | None, name)``: None lets the eval stage use the local teacher.

        ``eval.judge.model`` may name a local model directory (resolved against the config file) or
        an API model; with no model, an API teacher judges through the generate stage's engine and
        answer cache (its provider settings; ``max_new_tokens`` from the judge settings).
        """
        from .evaluate.judge import api_judge, local_judge
        from .teachers.api import parse_teacher

        cfg = self.cfg
        js = cfg.eval.judge_settings()
        if js is None or (js.model is None and not self.api):
            return None, None
        prices = (cfg.prices.teacher.usd_per_1m_input_tokens, cfg.prices.teacher.usd_per_1m_output_tokens)
        cache = cfg.resolve(cfg.teacher.cache) if cfg.teacher.cache else self.run_dir.root / ".cache" / "teacher-api.sqlite"
        if js.model is None:
            tcfg = self.teacher_config().model_copy(update={"top_logprobs": 0, "max_new_tokens": js.max_new_tokens,
                                                            "do_sample": False})
            return api_judge(tcfg, work / "judge-api", seed=cfg.seed, prices=prices, cache_path=cache), cfg.teacher.model
        if parse_teacher(js.model):
            same = self.api and parse_teacher(cfg.teacher.model)[0] == parse_teacher(js.model)[0]
            update = {"model": js.model, "top_logprobs": 0, "max_new_tokens": js.max_new_tokens, "do_sample": False,
                      "tokenizer": None, "base_url": js.base_url or (cfg.teacher.base_url if same else None),
                      "api_key_env": js.api_key_env or (cfg.teacher.api_key_env if same else None)}
            from .config import TeacherConfig

            tcfg = TeacherConfig.model_validate({**cfg.teacher.model_dump(), **update})
            return api_judge(tcfg, work / "judge-api", seed=cfg.seed, prices=prices, cache_path=cache), js.model
        path = cfg.resolve(js.model)
        model_hash(path)
        return local_judge(path, max_new_tokens=js.max_new_tokens, batch_size=js.batch_size, seed=cfg.seed), str(path)

    def _api_answers(self, splits: dict[str, list[dict]], work: Path) -> dict[str, list[dict]]:
        """An API teacher's answers on the evaluation splits (through the same cache and engine as generate)."""
        teacher_cfg = self.teacher_config().model_copy(update={"top_logprobs": 0, "max_new_tokens": self.cfg.eval.max_new_tokens})
        answers = {}
        for split, records in splits.items():
            self._generate(teacher_cfg, records, work / f"api-{split}", work / f"api-{split}.work")
            rows = {g["id"]: g for g in read_jsonl(work / f"api-{split}" / "generations.jsonl")}
            missing = [r["id"] for r in records if r["id"] not in rows]
            if missing:
                raise UserError(f"the API teacher did not answer {len(missing)} {split} prompts (first: {missing[0]}); "
                                f"see {work / f'api-{split}' / 'failed.jsonl'} and rerun")
            answers[split] = [{"id": r["id"], "text": rows[r["id"]]["text"], "finish_reason": rows[r["id"]]["finish_reason"],
                               **rows[r["id"]]["usage"]} for r in records]
        return answers

    def measure(self) -> str:
        from .evaluate.measure import measure_model
        from .io import write_json

        cfg = self.cfg
        inputs = {"latency": cfg.eval.latency.model_dump(mode="json"), "max_new_tokens": cfg.eval.max_new_tokens,
                  "eval": self._need("eval"), "machine": machine()}
        records = next(iter(self.eval_splits().values()))

        def build(out: Path, work: Path) -> dict:
            perf = {}
            for name, spec in self.models().items():
                if spec.get("api"):
                    perf[name] = self._api_perf()
                    continue
                say(f"  measuring {name}")
                perf[name] = measure_model(spec["path"], init=spec.get("init", "pretrained"), dtype=spec.get("dtype", "float32"),
                                           seed=cfg.seed, records=records, max_new_tokens=cfg.eval.max_new_tokens,
                                           queries=cfg.eval.latency.queries, batch_size=cfg.eval.latency.batch_size)
            write_json(out / "perf.json", {"machine": machine(), "models": perf})
            return {"models": list(perf)}

        self.hashes["measure"] = self.run_dir.run("measure", inputs, build)
        return self.hashes["measure"]

    def _api_perf(self) -> dict:
        """An API teacher is not run here: its cost comes from token prices and its measured token counts."""
        rows = [r for f in sorted((self.run_dir.path("eval") / "answers").glob("teacher__*.jsonl")) for r in read_jsonl(f)]
        n = max(len(rows), 1)
        return {"api": True, "params": None, "latency_p50_s": None, "latency_p95_s": None, "latencies_s": [],
                "tokens_per_s": None, "peak_rss_mb": None, "batched_queries_per_s": None,
                "mean_prompt_tokens": sum(r.get("prompt_tokens", 0) for r in rows) / n,
                "mean_completion_tokens": sum(r.get("completion_tokens", 0) for r in rows) / n}

    def costs(self) -> dict:
        """Cost per query of every measured model (from the measure stage and the configured prices)."""
        from .evaluate.cost import cost_summary

        results = read_json(self.run_dir.path("eval") / "results.json")
        perf = read_json(self.run_dir.path("measure") / "perf.json")["models"]
        return cost_summary(self.cfg.prices, perf, {n: m["role"] for n, m in results["models"].items()})

    def route(self, required: bool = False) -> str | None:
        """Calibrate the student → teacher cascade (:func:`potstill.route.stage.route_stage`).

        None when ``route.enabled`` is off, or (unless ``required``) when the calibration split is
        empty: a run without validation prompts still finishes, with a warning and no routing.
        """
        from .route.stage import route_stage

        h = route_stage(self, required)
        if h is not None:
            self.hashes["route"] = h
        return h

    def report(self) -> dict:
        from .evaluate.cost import break_even
        from .report.build import build_report

        cfg = self.cfg
        inputs = {"eval": self._need("eval"), "measure": self._need("measure"),
                  "prices": cfg.prices.model_dump(mode="json"), "name": cfg.name}
        routing = None
        route_hash = self.hashes.get("route") or (self.run_dir.done_hash("route") if cfg.route.enabled else None)
        if route_hash:
            inputs["route"] = route_hash
            routing = {**read_json(self.run_dir.path("route") / "route.json"),
                       "curves": read_json(self.run_dir.path("route") / "curves.json")}
        results = read_json(self.run_dir.path("eval") / "results.json")
        perf = read_json(self.run_dir.path("measure") / "perf.json")["models"]
        training = {m: read_json(self.run_dir.path(f"students/{m}") / "training.json") for m in cfg.train.methods}

        def build(out: Path, work: Path) -> dict:
            costs = self.costs()
            costs["break_even"] = self._break_even(break_even, costs, training)
            summary = {"name": cfg.name, "teacher": cfg.teacher.model, "student": cfg.student.model, "machine": machine(),
                       "queries_per_day": cfg.prices.queries_per_day, "prices": cfg.prices.model_dump(mode="json")}
            build_report(results, perf, costs, training, summary, out, routing=routing)
            return {"files": ["report.md", "report.html", "report.json"]}

        self.hashes["report"] = self.run_dir.run("report", inputs, build)
        report = read_json(self.run_dir.path("report") / "report.json")
        report["paths"] = {k: str(self.run_dir.path("report") / f"report.{k}") for k in ("html", "md", "json")}
        return report

    def _break_even(self, break_even, costs: dict, training: dict) -> dict:
        """One-off distillation cost: the teacher's answers (API spend, or generation time at the
        teacher's hourly price) plus student training time at the higher of the two hourly prices."""
        cfg = self.cfg
        gen = read_json(self.run_dir.path("generate") / "stats.json")
        t_hour = cfg.prices.teacher.usd_per_hour or 0.0
        s_hour = cfg.prices.student.usd_per_hour or 0.0
        one_off = gen.get("cost_usd", 0.0) if self.api else gen.get("generation_seconds", 0) / 3600 * t_hour
        one_off += sum(t.get("runtime_s", 0) for t in training.values()) / 3600 * max(t_hour, s_hour)
        best = min(cfg.train.methods, key=lambda m: costs[m]["cost_per_query_usd"])
        return break_even(one_off, costs["teacher"]["cost_per_query_usd"], costs[best]["cost_per_query_usd"],
                          cfg.prices.queries_per_day)

    # -- the whole run --------------------------------------------------------------------
    def preflight(self) -> None:
        """Checks that need no stage to run: the teacher and student exist; the path kd takes (printed:
        :func:`potstill.vocab.kd_path`, shared tokenizer, text-level or ULD); the
        teacher's terms allow the configured use (:mod:`potstill.terms`: a blocked run stops here, the
        verdict and obligations are printed and written to ``<run_dir>/terms.json``, kept on ``self.terms``)."""
        from .terms.gate import gate, preflight_terms

        cfg = self.cfg
        decision = gate(cfg)  # a teacher whose terms forbid the run stops before its weights are hashed
        teacher_hash = self.teacher_ident()
        model_hash(cfg.resolve(cfg.student.model), cfg.student.init)
        if "kd" in cfg.train.methods:
            from .train.stage import check_kd_tokenizers

            say(check_kd_tokenizers(cfg)[1])  # which path kd takes: token-level, text-level (sft) or ULD
        self.terms = preflight_terms(cfg, self.run_dir.root, teacher_hash=teacher_hash, say=say, decision=decision)

    def run_all(self, until: str = "report") -> dict | None:
        """Every stage (skipping those done); ``until="route"`` stops after a required route stage."""
        self.preflight()
        self.prompts()
        self.generate()
        for method in self.cfg.train.methods:
            self.train(method)
        self.evaluate()
        self.measure()
        if until == "route":
            self.route(required=True)
            return None
        self.route()
        return self.report()

    def _need(self, stage: str) -> str:
        h = self.hashes.get(stage) or self.run_dir.done_hash(stage)
        if h is None:
            raise UserError(f"stage '{stage}' has not been run yet in {self.run_dir.root} (run it first, or use 'potstill run')")
        return h


def machine() -> str:
    """A short description of this machine for the report."""
    import os

    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {dev}, torch {torch.__version__}"

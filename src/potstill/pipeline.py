"""The pipeline: config → prompts → generate → train (one student per method) → eval → measure → report.

Each stage's inputs (its config section, the hashes of the models and data it reads, and the
hashes of the upstream stages) decide whether it runs again; see :mod:`potstill.run_dir`.
"""

from __future__ import annotations

import platform
from pathlib import Path

from .config import RunConfig, dump_config
from .errors import UserError
from .io import read_json, read_jsonl, sha256_dir, sha256_file, write_text
from .models import check_model_dir
from .progress import say
from .run_dir import RunDir

STAGES = ("prompts", "generate", "train", "eval", "measure", "report")
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
        write_text(self.run_dir.root / "config.yaml", dump_config(cfg))
        self.hashes: dict[str, str] = {}

    # -- stages ---------------------------------------------------------------------------
    def prompts(self) -> str:
        from .data.stage import run_prompts

        cfg = self.cfg
        sources = [s.path for s in (*cfg.prompts.sources, *cfg.prompts.test, *cfg.prompts.ood)]
        inputs = {"config": cfg.prompts.model_dump(mode="json"), "files": {s: source_hash(cfg, s) for s in sources}}

        def build(out: Path, work: Path) -> dict:
            stats = run_prompts(cfg.prompts, cfg.base_dir, out)
            say("  prompts: " + ", ".join(f"{k}={v}" for k, v in stats.items() if isinstance(v, int))
                + "; dropped " + ", ".join(f"{k}={v}" for k, v in stats.get("dropped", {}).items()))
            return stats

        self.hashes["prompts"] = self.run_dir.run("prompts", inputs, build)
        return self.hashes["prompts"]

    def generate(self) -> str:
        from .teachers.api import parse_teacher, teacher_identity
        from .teachers.stage import hashed_teacher_config, run_generate

        cfg = self.cfg
        api = parse_teacher(cfg.teacher.model)
        teacher_cfg, cache = cfg.teacher, None
        if api:  # no local weights: the provider, model and endpoint stand for them
            teacher, ident = None, teacher_identity(api[0], api[1], cfg.teacher.base_url)
            cache = cfg.resolve(cfg.teacher.cache) if cfg.teacher.cache else self.run_dir.root / ".cache" / "teacher-api.sqlite"
            if cfg.teacher.tokenizer:
                teacher_cfg = cfg.teacher.model_copy(update={"tokenizer": str(cfg.resolve(cfg.teacher.tokenizer))})
        else:
            teacher = cfg.resolve(cfg.teacher.model)
            ident = model_hash(teacher)
        inputs = {"config": hashed_teacher_config(cfg.teacher), "teacher": ident,
                  "prompts": self._need("prompts"), "seed": cfg.seed}
        prices = (cfg.prices.teacher.usd_per_1m_input_tokens, cfg.prices.teacher.usd_per_1m_output_tokens)
        records = read_jsonl(self.run_dir.path("prompts") / "train.jsonl")
        self.hashes["generate"] = self.run_dir.run(
            "generate", inputs, lambda out, work: run_generate(teacher_cfg, teacher, records, out, work, cfg.seed,
                                                               prices=prices, cache_path=cache))
        return self.hashes["generate"]

    def train(self, method: str) -> str:
        from .train.stage import train_student

        cfg = self.cfg
        stage = f"students/{method}"
        student = cfg.resolve(cfg.student.model)
        inputs = {"method": method, "train": cfg.train.model_dump(mode="json"),
                  "student": cfg.student.model_dump(mode="json"), "student_hash": model_hash(student, cfg.student.init),
                  "generate": self._need("generate"), "seed": cfg.seed}
        if method == "kd":
            inputs["teacher"] = model_hash(cfg.resolve(cfg.teacher.model))
        provenance = {"teacher": str(cfg.resolve(cfg.teacher.model)), "teacher_hash": model_hash(cfg.resolve(cfg.teacher.model)),
                      "student_base": str(student), "student_base_hash": inputs["student_hash"],
                      "prompts_hash": self._need("prompts"), "generations_hash": inputs["generate"]}

        def build(out: Path, work: Path) -> dict:
            return train_student(method, cfg, self.pairs(), out, work, provenance=provenance)

        self.hashes[stage] = self.run_dir.run(stage, inputs, build)
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
        models = {"teacher": {"path": cfg.resolve(cfg.teacher.model), "role": "teacher", "method": None, "dtype": cfg.teacher.dtype}}
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
                  "teacher": model_hash(cfg.resolve(cfg.teacher.model)), "floor": cfg.student.model_dump(mode="json"),
                  "seed": cfg.seed}
        self.hashes["eval"] = self.run_dir.run(
            "eval", inputs, lambda out, work: {"splits": list(run_eval(cfg.eval, self.models(), self.eval_splits(), out, work, cfg.seed)["splits"])})
        return self.hashes["eval"]

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
                say(f"  measuring {name}")
                perf[name] = measure_model(spec["path"], init=spec.get("init", "pretrained"), dtype=spec.get("dtype", "float32"),
                                           seed=cfg.seed, records=records, max_new_tokens=cfg.eval.max_new_tokens,
                                           queries=cfg.eval.latency.queries, batch_size=cfg.eval.latency.batch_size)
            write_json(out / "perf.json", {"machine": machine(), "models": perf})
            return {"models": list(perf)}

        self.hashes["measure"] = self.run_dir.run("measure", inputs, build)
        return self.hashes["measure"]

    def report(self) -> dict:
        from .evaluate.cost import break_even, cost_summary
        from .report.build import build_report

        cfg = self.cfg
        inputs = {"eval": self._need("eval"), "measure": self._need("measure"),
                  "prices": cfg.prices.model_dump(mode="json"), "name": cfg.name}
        results = read_json(self.run_dir.path("eval") / "results.json")
        perf = read_json(self.run_dir.path("measure") / "perf.json")["models"]
        training = {m: read_json(self.run_dir.path(f"students/{m}") / "training.json") for m in cfg.train.methods}

        def build(out: Path, work: Path) -> dict:
            roles = {n: m["role"] for n, m in results["models"].items()}
            costs = cost_summary(cfg.prices, perf, roles)
            costs["break_even"] = self._break_even(break_even, costs, training)
            summary = {"name": cfg.name, "teacher": cfg.teacher.model, "student": cfg.student.model, "machine": machine(),
                       "queries_per_day": cfg.prices.queries_per_day, "prices": cfg.prices.model_dump(mode="json")}
            build_report(results, perf, costs, training, summary, out)
            return {"files": ["report.md", "report.html", "report.json"]}

        self.hashes["report"] = self.run_dir.run("report", inputs, build)
        return read_json(self.run_dir.path("report") / "report.json")

    def _break_even(self, break_even, costs: dict, training: dict) -> dict:
        """One-off distillation cost (teacher generation + student training time at their hourly prices)."""
        cfg = self.cfg
        gen = read_json(self.run_dir.path("generate") / "stats.json")
        t_hour = cfg.prices.teacher.usd_per_hour or 0.0
        s_hour = cfg.prices.student.usd_per_hour or 0.0
        one_off = gen.get("generation_seconds", 0) / 3600 * t_hour
        one_off += sum(t.get("runtime_s", 0) for t in training.values()) / 3600 * max(t_hour, s_hour)
        best = min((m for m in cfg.train.methods), key=lambda m: costs[m]["cost_per_query_usd"])
        return break_even(one_off, costs["teacher"]["cost_per_query_usd"], costs[best]["cost_per_query_usd"],
                          cfg.prices.queries_per_day)

    # -- the whole run --------------------------------------------------------------------
    def run_all(self) -> dict:
        self.prompts()
        self.generate()
        for method in self.cfg.train.methods:
            self.train(method)
        self.evaluate()
        self.measure()
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

"""The terms gate: may this teacher's outputs be used the way the run config says?

Verdicts (:attr:`Decision.verdict`):

* ``allowed``: the terms put no limit on the configured use;
* ``allowed_with_obligations``: allowed, and the obligations (naming, attribution, pass-through
  terms...) are printed, written to ``terms.json`` and carried into every student's model card;
* ``blocked``: the terms forbid the configured use; the run stops with one line that quotes the
  clause, unless ``terms.acceptance`` (who, why, date) is recorded in the config;
* ``accepted``: would be blocked, but an acceptance is recorded: printed and carried on;
* ``unknown``: no registry entry matches the teacher: a warning line, and the run continues
  (potstill cannot tell; the user checks the license).

What blocks, for ``terms.use`` ``train_model`` or ``research``: terms that forbid using outputs to
improve other models (``outputs_may_train_models: no``, e.g. Llama 2/3), and terms that forbid
using outputs to develop *competing* models (``no_competing``: OpenAI, Anthropic, Gemini API),
since potstill cannot tell whether a student competes and the acceptance records the user's
statement that it does not. Any use with ``terms.commercial`` true is blocked by a non-commercial
license (``commercial_use: no``). ``evaluation`` (outputs only compared, nothing trained) is only
subject to the commercial limit; a pipeline run always trains students, so it refuses ``evaluation``.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path

from rich.markup import escape

from .. import __version__
from ..errors import UserError
from ..io import sha256_dir, write_json
from ..teachers.spec import teacher_spec
from .registry import Entry, Registry, load_registry, match_teacher

VERDICTS = ("allowed", "allowed_with_obligations", "accepted", "blocked", "unknown")
USES = ("train_model", "research", "evaluation")
TRAINING_USES = ("train_model", "research")
TOKENIZER_FILES = ("tokenizer*", "special_tokens_map.json", "vocab*", "merges.txt", "*.model", "chat_template*")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@dataclass
class Decision:
    """The gate's answer for one teacher and one use (see the module docstring)."""

    teacher: str
    verdict: str
    entry: Entry | None
    matched_by: str | None
    tried: list[str]
    use: str
    commercial: bool
    registry_version: str
    reasons: list[str] = field(default_factory=list)
    acceptance: dict | None = None
    warnings: list[str] = field(default_factory=list)
    teacher_info: dict = field(default_factory=dict)

    @property
    def obligations(self) -> list[str]:
        return list(self.entry.obligations) if self.entry else []

    @property
    def blocked(self) -> bool:
        return self.verdict == "blocked"

    def head(self) -> str:
        """``teacher 'X' matches 'llama-3' (Meta Llama 3 Community License, checked 2026-11-28)``."""
        if self.entry is None:
            return (
                f"teacher '{self.teacher}' matches no entry of potstill's terms registry (version "
                f"{self.registry_version})"
            )
        e = self.entry
        head = f"teacher '{self.teacher}' matches '{e.id}' ({e.license}, checked {e.checked.isoformat()})"
        if self.teacher_info.get("kind") == "local" and self.matched_by:
            head += f", identified from {self.matched_by}"
        return head

    def message(self) -> str:
        """The one line of a blocked run: what forbids it, the clause, and how to proceed."""
        clause = _one_line(self.entry.clause) if self.entry else ""
        return (
            f'{self.head()}: {"; and ".join(self.reasons)}: "{clause}" — record terms.acceptance '
            f"(who, why, date) in the config to proceed"
        )

    def lines(self) -> list[str]:
        """What the run prints: the verdict, then each obligation and warning."""
        if self.entry is None:
            tried = ", ".join(self.tried) or "nothing"
            return [
                f"terms: {self.head()}; tried: {tried}. potstill cannot tell whether its terms allow training "
                f"on its outputs: check its license yourself (the run continues)"
            ] + [f"terms: {w}" for w in self.warnings]
        e = self.entry
        if self.verdict == "blocked":
            return [f"terms: {self.message()}"]
        if self.verdict == "accepted":
            a = self.acceptance or {}
            out = [
                f"terms: {self.head()}: {'; and '.join(self.reasons)} — accepted by {a.get('who')} on {a.get('date')}: "
                f"{a.get('why')}"
            ]
        elif self.verdict == "allowed":
            out = [
                f"terms: {self.head()}: its outputs may train other models ({e.outputs_may_train_models}); no "
                "obligations"
            ]
        else:
            out = [
                f"terms: {self.head()}: allowed ({self.use}, {'commercial' if self.commercial else 'non-commercial'})"
                + (" with obligations:" if self.obligations else "")
            ]
        out += [f"terms:   - {o}" for o in self.obligations]
        out += [f"terms: {w}" for w in self.warnings]
        return out

    def to_dict(self) -> dict:
        """What ``terms.json``, the students' provenance and their model cards record."""
        e = self.entry
        return {
            "registry_version": self.registry_version,
            "teacher": self.teacher,
            "matched_by": self.matched_by,
            "tried": list(self.tried),
            "entry_id": e.id if e else None,
            "entry": e.summary() if e else None,
            "use": self.use,
            "commercial": self.commercial,
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "obligations": self.obligations,
            "name_prefix": e.name_prefix if e else None,
            "attribution": e.attribution if e else None,
            "acceptance": self.acceptance,
            "warnings": list(self.warnings),
            **({"teacher_info": self.teacher_info} if self.teacher_info else {}),
        }


def _acceptance_dict(acceptance) -> dict | None:
    if acceptance is None:
        return None
    if hasattr(acceptance, "model_dump"):
        acceptance = acceptance.model_dump(mode="json")
    a = {
        k: (v.isoformat() if isinstance(v, (datetime.date, datetime.datetime)) else v)
        for k, v in dict(acceptance).items()
    }
    missing = [k for k in ("who", "why", "date") if not str(a.get(k) or "").strip()]
    if missing:
        raise UserError(f"terms.acceptance needs who, why and date (missing: {', '.join(missing)})")
    return {"who": a["who"], "why": a["why"], "date": a["date"]}


def blocking_reasons(entry: Entry, use: str, commercial: bool) -> list[str]:
    """Why ``entry``'s terms forbid ``use`` (empty: they do not)."""
    reasons = []
    if use in TRAINING_USES and entry.outputs_may_train_models == "no":
        reasons.append("its terms forbid using outputs to improve other LLMs")
    if use in TRAINING_USES and entry.outputs_may_train_models == "no_competing":
        reasons.append(
            "its terms forbid using outputs to develop models that compete with the provider, and potstill "
            "cannot tell whether this student competes"
        )
    if commercial and entry.commercial_use == "no":
        reasons.append(
            "its license does not allow commercial use (set terms.commercial: false for non-commercial research)"
        )
    return reasons


def _declared_license_warnings(m, reg: Registry, use: str, commercial: bool) -> list[str]:
    """A local model whose name allowed the use but whose declared license would not: say so."""
    if m.entry is None or blocking_reasons(m.entry, use, commercial):
        return []
    out = []
    for where, li in m.names.licenses:
        e = reg.match_license(li)
        if e is not None and e.id != m.entry.id and blocking_reasons(e, use, commercial):
            out.append(
                f"the model also declares license '{li}' ({where}: entry '{e.id}', {e.license}), which "
                f"would block this use; it was identified as '{m.entry.id}' from {m.matched_by}: check which "
                "terms apply"
            )
    return out


def evaluate(
    teacher: str,
    use: str = "train_model",
    commercial: bool = True,
    acceptance=None,
    *,
    base_dir: str | Path | None = None,
    base_url: str | None = None,
    registry: Registry | None = None,
) -> Decision:
    """The verdict for ``teacher`` (an API ``provider:MODEL``, a model directory or ``.gguf`` file, or a name)
    under ``use``."""
    if use not in USES:
        raise UserError(f"unknown terms use '{use}' (one of: {', '.join(USES)})")
    reg = registry or load_registry()
    m = match_teacher(teacher, base_dir=base_dir, base_url=base_url, registry=reg)
    acc = _acceptance_dict(acceptance)
    meta = m.names.metadata
    own = (
        {k: meta[k] for k in ("format", "name", "license", "license_name", "base_model", "source") if meta[k]}
        if meta
        else None
    )
    info = {
        k: v
        for k, v in {
            "kind": m.names.kind,
            "path": m.names.path,
            "provider": m.names.provider,
            "revision": m.names.revision,
            "metadata": own or None,
        }.items()
        if v is not None
    }
    d = Decision(
        teacher=str(teacher),
        verdict="unknown",
        entry=m.entry,
        matched_by=m.matched_by,
        tried=m.names.tried(),
        use=use,
        commercial=bool(commercial),
        registry_version=reg.version,
        acceptance=acc,
        teacher_info=info,
    )
    if m.entry is None:
        return d
    d.reasons = blocking_reasons(m.entry, use, commercial)
    d.warnings += _declared_license_warnings(m, reg, use, commercial)
    if d.reasons:
        d.verdict = "accepted" if acc else "blocked"
    else:
        d.verdict = "allowed_with_obligations" if m.entry.obligations else "allowed"
    return d


def name_warnings(decision: Decision, name: str) -> list[str]:
    """A reminder when a student's name does not start with the prefix the terms require."""
    prefix = decision.entry.name_prefix if decision.entry else None
    if prefix and not str(name).lower().startswith(prefix.lower()):
        return [
            f'the run name \'{name}\' does not start with "{prefix}": name a distributed student "{prefix}..." '
            f"(required by the {decision.entry.license})"
        ]
    return []


def gate(cfg, spec=None) -> Decision:
    """The decision for a run config (:class:`potstill.config.RunConfig`); raises the one-line
    :class:`UserError` when the run is blocked, or when ``terms.use`` is ``evaluation`` (a pipeline
    run trains students on the teacher's outputs). ``spec``: the run's teacher
    (:class:`potstill.teachers.spec.ModelSpec`; a ``vllm:DIR`` teacher's terms are those of DIR)."""
    t = cfg.terms
    if t.use == "evaluation":
        raise UserError(
            f"terms.use is 'evaluation', but this run trains students on the teacher's outputs "
            f"(train.methods: {', '.join(cfg.train.methods)}): set terms.use to 'train_model' or 'research'"
        )
    spec = spec or teacher_spec(cfg.teacher, cfg.resolve)
    d = evaluate(spec.display, t.use, t.commercial, t.acceptance, base_dir=cfg.base_dir, base_url=spec.base_url)
    if d.blocked:
        raise UserError(d.message())
    d.warnings += name_warnings(d, cfg.name)
    return d


def preflight_terms(
    cfg,
    spec=None,
    run_root: str | Path | None = None,
    teacher_hash: str | None = None,
    say=None,
    decision: Decision | None = None,
) -> Decision:
    """The gate before any stage runs: stop a blocked run; print the verdict, obligations and
    warnings (with ``say``); write ``<run_root>/terms.json`` (atomically). ``decision``: the
    :func:`gate`'s answer when already asked."""
    spec = spec or teacher_spec(cfg.teacher, cfg.resolve)
    d = decision if decision is not None else gate(cfg, spec)
    if say is not None:
        for line in d.lines():
            say(escape(line))
    info = dict(d.teacher_info)
    info["id"] = spec.display
    if teacher_hash:
        info["weights_hash" if d.teacher_info.get("kind") == "local" else "identity_hash"] = teacher_hash
    tok = (
        cfg.resolve(cfg.teacher.tokenizer)
        if cfg.teacher.tokenizer
        else (Path(info["path"]) if info.get("path") else None)
    )
    if tok is not None and Path(tok).is_dir():
        info["tokenizer"] = str(tok)
        info["tokenizer_hash"] = sha256_dir(tok, TOKENIZER_FILES)
    d.teacher_info = info
    if run_root is not None:
        write_json(
            Path(run_root) / "terms.json",
            {
                **d.to_dict(),
                "potstill_version": __version__,
                "checked_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            },
        )
    return d


def terms_provenance(cfg, spec=None, decision: Decision | None = None) -> dict:
    """What a student's provenance records about the teacher's terms (the preflight's decision,
    or the gate's answer now when no preflight ran, e.g. ``potstill train`` on its own)."""
    d = decision if decision is not None else gate(cfg, spec)
    return json.loads(json.dumps(d.to_dict(), default=str))

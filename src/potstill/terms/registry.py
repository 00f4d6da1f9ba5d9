"""The teacher-terms registry (``registry.yaml``, shipped in the package): load, validate, match.

A teacher is matched by name: an API model name (``gpt-4o``), a Hugging Face id
(``meta-llama/Llama-3.1-8B-Instruct``), or, for a local model (a directory or a ``.gguf`` file),
what the model's own metadata says about it (see :func:`teacher_names`). Entries are tried in file
order and the first whose ``match`` regex (case-insensitive ``re.search``, over the name with runs
of whitespace read as ``-``) finds a name, and no ``exclude`` regex does, wins; the file lists
specific entries before general ones (Llama 3.1 before Llama 3). ``paths`` are globs over a local
teacher's resolved path; ``license_ids`` are declared license ids (README front matter's
``license:`` / ``license_name:``, GGUF ``general.license``), tried only once no name from the
model's metadata matched, and before its directory name.
"""

from __future__ import annotations

import datetime
import fnmatch
import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import UserError
from ..teachers.spec import parse_model
from .metadata import model_metadata, name_of, read_json

REGISTRY_PATH = Path(__file__).with_name("registry.yaml")

OutputsVerdict = Literal["yes", "no", "conditional", "no_competing"]
Commercial = Literal["yes", "limited", "no"]


class Entry(BaseModel):
    """One family/model's terms, as they bear on distillation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9.\-]*$", description="Stable entry id.")
    family: str
    license: str = Field(description="The license or terms' name.")
    match: list[str] = Field(
        default_factory=list, description="Case-insensitive regexes searched in the teacher's names."
    )
    exclude: list[str] = Field(default_factory=list, description="Regexes that veto a name matched by `match`.")
    paths: list[str] = Field(default_factory=list, description="Globs over a local teacher's resolved directory.")
    license_ids: list[str] = Field(default_factory=list, description="README front-matter license ids (lower case).")
    examples: list[str] = Field(default_factory=list, description="Names that must match this entry (tested).")
    not_examples: list[str] = Field(default_factory=list, description="Names that must not match this entry (tested).")
    outputs_may_train_models: OutputsVerdict
    commercial_use: Commercial
    name_prefix: str | None = Field(None, description="What a distributed student's name must start with.")
    attribution: str | None = Field(None, description="A phrase that must be displayed (e.g. 'Built with Llama').")
    obligations: list[str] = Field(default_factory=list)
    clause: str = Field(min_length=1, description="A short quote of the relevant clause.")
    source_url: str = Field(pattern=r"^https://\S+$")
    checked: datetime.date
    verification: Literal["recalled", "fetched"] = Field(
        description="fetched: compared with the page on `checked`; recalled: written from knowledge of the "
        "published text without re-fetching it (quotes may differ in wording)."
    )
    notes: str | None = None

    @field_validator("match", "exclude")
    @classmethod
    def _regexes(cls, v: list[str]) -> list[str]:
        for pat in v:
            try:
                re.compile(pat, re.I)
            except re.error as e:
                raise ValueError(f"bad regex {pat!r}: {e}") from None
        return v

    @field_validator("license_ids")
    @classmethod
    def _lower(cls, v: list[str]) -> list[str]:
        return [s.strip().lower() for s in v]

    @model_validator(mode="after")
    def _matchable(self):
        if not (self.match or self.paths or self.license_ids):
            raise ValueError(f"entry '{self.id}' has nothing to match (match, paths or license_ids)")
        if self.match and not self.examples:
            raise ValueError(f"entry '{self.id}' has match patterns but no examples")
        return self

    def matches(self, name: str) -> bool:
        """Whether ``name`` (any spelling of a teacher) belongs to this entry."""
        return any(re.search(p, name, re.I) for p in self.match) and not any(
            re.search(p, name, re.I) for p in self.exclude
        )

    def matches_path(self, path: str) -> bool:
        p = path.replace("\\", "/").lower()
        return any(fnmatch.fnmatchcase(p, g.lower()) for g in self.paths)

    def summary(self) -> dict:
        """The fields a run records (no matching patterns)."""
        return self.model_dump(
            mode="json",
            include={
                "id",
                "family",
                "license",
                "outputs_may_train_models",
                "commercial_use",
                "name_prefix",
                "attribution",
                "obligations",
                "clause",
                "source_url",
                "checked",
                "verification",
                "notes",
            },
        )


class Registry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(min_length=1)
    entries: list[Entry] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self):
        ids, lic = set(), {}
        for e in self.entries:
            if e.id in ids:
                raise ValueError(f"duplicate entry id '{e.id}'")
            ids.add(e.id)
            for li in e.license_ids:
                if li in lic:
                    raise ValueError(f"license id '{li}' is claimed by both '{lic[li]}' and '{e.id}'")
                lic[li] = e.id
        return self

    def get(self, entry_id: str) -> Entry:
        for e in self.entries:
            if e.id == entry_id:
                return e
        raise KeyError(entry_id)

    def match_name(self, name: str) -> Entry | None:
        """The first entry (in file order) whose patterns match ``name`` (whitespace read as ``-``:
        a GGUF header's ``Qwen2 72B Instruct`` is ``Qwen2-72B-Instruct``)."""
        name = re.sub(r"\s+", "-", str(name).strip())
        if not name:
            return None
        return next((e for e in self.entries if e.matches(name)), None)

    def match_path(self, path: str) -> Entry | None:
        return next((e for e in self.entries if e.matches_path(path)), None)

    def match_license(self, license_id: str) -> Entry | None:
        li = str(license_id).strip().lower()
        return next((e for e in self.entries if li in e.license_ids), None)


def load_registry(path: str | Path | None = None) -> Registry:
    """The registry shipped with potstill (or the YAML/JSON file at ``path``), validated."""
    return _load(str(path or REGISTRY_PATH))


@functools.lru_cache(maxsize=8)
def _load(path: str) -> Registry:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except FileNotFoundError:
        raise UserError("terms registry not found", path) from None
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise UserError(f"malformed terms registry ({e})", path) from None
    try:
        return Registry.model_validate(data)
    except ValidationError as err:
        e = err.errors()[0]
        loc = ".".join(str(x) for x in e["loc"])
        raise UserError(f"invalid terms registry at '{loc}': {e['msg']}", path) from None


# ----------------------------------------------------------------------------------------------
# What a teacher is called


@dataclass
class TeacherNames:
    """Everything that may name a teacher, in the order it is tried."""

    teacher: str  # as configured
    kind: Literal["api", "local", "name"]  # api: provider:MODEL; local: a directory or .gguf file; name: else
    names: list[tuple[str, str]] = field(default_factory=list)  # (where it came from, name)
    licenses: list[tuple[str, str]] = field(default_factory=list)  # (where it came from, license id)
    fallback: list[tuple[str, str]] = field(default_factory=list)  # local: its directory/file name, tried last
    metadata: dict | None = None  # local: what potstill.terms.metadata.model_metadata read
    path: str | None = None  # a local teacher's resolved directory or file
    provider: str | None = None  # api: "openai" / "anthropic"
    official_endpoint: bool = False  # api: the provider's own endpoint (no base_url)
    revision: str | None = None  # a Hugging Face cache snapshot's commit, when the path shows one
    reference: bool = False  # config.json says potstill_reference: true

    def tried(self) -> list[str]:
        return [n for _, n in self.names] + [f"license {li}" for _, li in self.licenses] + [n for _, n in self.fallback]


def teacher_names(teacher: str, base_dir: str | Path | None = None, base_url: str | None = None) -> TeacherNames:
    """The names (and license ids) a teacher goes by, in the order they are tried.

    ``provider:MODEL`` (an API teacher) is named by MODEL. A local model (an existing directory or
    ``.gguf`` file, relative to ``base_dir``) is named first by its own metadata
    (:func:`~potstill.terms.metadata.model_metadata`: a GGUF header's ``general.*`` keys, or
    config.json ``_name_or_path`` and the README front matter's ``base_model``), then by its Hugging
    Face cache path (``models--ORG--NAME``); its resolved path is matched against the entries'
    ``paths``; then its declared license (GGUF ``general.license``, README ``license`` /
    ``license_name``); and only then by its directory or file name. Anything else is taken as a name
    (a Hugging Face id or bare model name). A name that is a filesystem path counts by its last
    component (or ``ORG/NAME`` of a Hugging Face cache path), never by the folders above it.
    """
    teacher = str(teacher)
    spec = parse_model(teacher, where="teacher")
    if spec.is_api:
        return TeacherNames(
            teacher,
            "api",
            names=[("API model name", spec.name)],
            provider=spec.provider,
            official_endpoint=base_url is None,
        )
    p = Path(teacher).expanduser()
    if base_dir is not None and not p.is_absolute():
        p = Path(base_dir) / p
    if not (p.is_dir() or (p.is_file() and p.suffix.lower() == ".gguf")):
        return TeacherNames(teacher, "name", names=[("name", name_of(teacher))])
    p = p.resolve()
    meta = model_metadata(p)
    info = TeacherNames(teacher, "local", path=str(p), metadata=meta)
    posix = str(p).replace("\\", "/")
    m = re.search(r"/snapshots/([0-9a-f]{40})(/|$)", posix)
    info.revision = m.group(1) if m else None
    info.reference = p.is_dir() and read_json(p / "config.json").get("potstill_reference") is True
    info.names += [tuple(x) for x in meta["names"]]
    m = re.search(r"models--([^/]+?)--([^/]+)/snapshots/", posix)
    if m:  # a Hugging Face cache snapshot: models--ORG--NAME/snapshots/SHA
        info.names.append(("Hugging Face cache", f"{m.group(1)}/{m.group(2)}"))
    src = meta["source"]
    if meta["license"] and meta["license"] != "other":
        info.licenses.append((src["license"], meta["license"]))
    if meta["license_name"]:
        info.licenses.append((src["license_name"], meta["license_name"]))
    info.fallback.append(("file name" if p.is_file() else "directory name", p.stem if p.is_file() else p.name))
    return info


@dataclass
class Match:
    entry: Entry | None
    matched_by: str | None
    names: TeacherNames


def match_teacher(
    teacher: str, base_dir: str | Path | None = None, base_url: str | None = None, registry: Registry | None = None
) -> Match:
    """The registry entry that applies to ``teacher`` (``Match.entry`` is None when unknown)."""
    reg = registry or load_registry()
    info = teacher_names(teacher, base_dir, base_url)
    if info.reference:
        return Match(reg.get("potstill-reference"), "config.json potstill_reference: true", info)
    meta = info.metadata or {}
    lic = meta.get("license") if meta.get("license") != "other" else meta.get("license_name")
    declared = f", license {lic}" if lic else ""  # what a local model declares, for the record
    for where, name in info.names:
        e = reg.match_name(name)
        if e:
            return Match(e, f"{where} '{name}'{declared}", info)
    if info.path:
        e = reg.match_path(info.path)
        if e:
            return Match(e, f"path '{info.path}'", info)
    for where, li in info.licenses:
        e = reg.match_license(li)
        if e:
            return Match(e, f"{where} '{li}'", info)
    for where, name in info.fallback:
        e = reg.match_name(name)
        if e:
            return Match(e, f"{where} '{name}'{declared}", info)
    if info.kind == "api" and info.official_endpoint and info.provider in ("openai", "anthropic"):
        e = reg.get(f"{info.provider}-api")
        return Match(e, f"{info.provider}'s own endpoint (model name not in the registry)", info)
    return Match(None, None, info)

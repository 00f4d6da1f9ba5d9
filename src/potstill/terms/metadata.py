"""What a local model says about itself: its name, license and base models, read from its own files.

A renamed directory (``smol-hf``, ``teacher-v2``) says nothing; the model's own metadata does. One
function, :func:`model_metadata`, reads it from

* a GGUF file (``*.gguf``, or a directory holding GGUF files and no ``config.json``): the
  ``general.*`` keys of its header, read with :class:`gguf.GGUFReader` (memory-mapped: the tensor
  data is never read, so a file of many GB costs no more than its header);
* a Hugging Face model directory: the model card's YAML front matter (``README.md``: ``license``,
  ``license_name``, ``base_model``) and ``config.json`` ``_name_or_path``.

The terms gate (:mod:`potstill.terms.registry`) matches its result against the registry; the model
card writer and the GGUF converter can reuse it to carry a model's name and license along.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path

import yaml

from ..errors import UserError

# Spellings of a license met in model cards and GGUF headers, and the registry's id for each.
LICENSE_ALIASES = {
    "apache 2.0": "apache-2.0",
    "apache2": "apache-2.0",
    "apache-2": "apache-2.0",
    "apache 2": "apache-2.0",
    "apache2.0": "apache-2.0",
    "apache license 2.0": "apache-2.0",
    "apache license, version 2.0": "apache-2.0",
    "mit license": "mit",
}


def normalize_license(value) -> str | None:
    """A license id as the registry spells it: lower case, common aliases folded (``Apache 2.0`` ->
    ``apache-2.0``); None for an empty value."""
    text = " ".join(str(value or "").split()).lower()
    return LICENSE_ALIASES.get(text, text) or None


def name_of(name: str) -> str:
    """A name as matched: a filesystem path stands for its model, not its parent folders (a user or
    folder called ``gemma`` must not decide the terms): ``ORG/NAME`` of a Hugging Face cache path
    (``models--ORG--NAME``), else the path's last component; a Hugging Face URL gives ``ORG/NAME``;
    a Hugging Face id stays as it is."""
    n = str(name).strip().replace("\\", "/")
    url = re.match(r"^https?://([^/]+)/(.*)$", n)
    if url:
        parts = [x for x in url.group(2).split("/") if x]
        if "huggingface.co" in url.group(1).lower():
            parts = [x for x in parts if x not in ("models", "api")][:2]
        return "/".join(parts) or n
    if not _looks_like_path(n):
        return n
    m = re.search(r"models--([^/]+?)--([^/]+)", n)
    if m:
        return f"{m.group(1)}/{m.group(2)}"
    parts = [x for x in n.rstrip("/").split("/") if x not in ("", ".", "..", "~")]
    return parts[-1] if parts else n


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or bool(re.match(r"^[A-Za-z]:/", name))


def _as_list(v) -> list[str]:
    if v is None:
        return []
    if isinstance(v, (list, tuple)):
        return [str(x).strip() for x in v if x is not None and str(x).strip()]
    return [str(v).strip()] if str(v).strip() else []


def front_matter(readme: str | Path) -> dict:
    """The YAML front matter of a model card (``{}`` when it has none or it does not parse)."""
    try:
        text = Path(readme).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    try:
        data = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def read_json(path: str | Path) -> dict:
    """A small JSON file as a dict (``{}`` when missing, unreadable or not an object)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def gguf_fields(path: str | Path) -> dict:
    """The ``general.*`` string (and string-list) values of a GGUF file's header, by key.

    The header is parsed once per file version (path, size, modification time): parsing walks the
    whole key-value section, tokenizer vocabulary included (about a second for 50k tokens).
    Raises :class:`UserError` when the file is not a readable GGUF file."""
    st = Path(path).stat()
    return copy.deepcopy(_gguf_fields(str(Path(path).resolve()), st.st_size, st.st_mtime_ns))


@functools.lru_cache(maxsize=16)
def _gguf_fields(path: str, size: int, mtime_ns: int) -> dict:
    import gguf  # defers gguf (GGUF files only)

    try:
        reader = gguf.GGUFReader(path, "r")
    except (OSError, ValueError, IndexError) as e:
        raise UserError(f"not a readable GGUF file ({e})", str(path)) from None
    out = {}
    for key, field in reader.fields.items():
        if not key.startswith("general.") or field.types[:1] not in (
            [gguf.GGUFValueType.STRING],
            [gguf.GGUFValueType.ARRAY],
        ):
            continue
        try:
            value = field.contents()
        except (ValueError, IndexError, UnicodeDecodeError):
            continue
        if isinstance(value, str) or (isinstance(value, list) and all(isinstance(x, str) for x in value)):
            out[key] = value
    del reader  # releases the memory map
    return out


def _empty(fmt: str | None) -> dict:
    return {
        "format": fmt,
        "name": None,
        "license": None,
        "license_name": None,
        "base_model": [],
        "source": {},
        "names": [],
    }


def _finish(
    meta: dict,
    names: list[tuple[str, str]],
    bases: list[tuple[str, str]],
    licenses: list[tuple[str, str]],
    license_names: list[tuple[str, str]],
) -> dict:
    seen: set[str] = set()
    for where, n in names + bases:
        if n and n.lower() not in seen:
            seen.add(n.lower())
            meta["names"].append((where, n))
    if names:
        meta["source"]["name"], meta["name"] = names[0]
    if bases:
        meta["base_model"] = [n for _, n in bases]
        meta["source"]["base_model"] = bases[0][0]
    for key, found in (("license", licenses), ("license_name", license_names)):
        found = [(w, normalize_license(v)) for w, v in found if normalize_license(v)]
        if found:
            meta["source"][key], meta[key] = found[0]
    return meta


def _gguf_metadata(path: Path) -> dict:
    f = gguf_fields(path)
    names = [("GGUF general.name", f["general.name"])] if isinstance(f.get("general.name"), str) else []
    base = f.get("general.basename")
    if isinstance(base, str):
        # the basename alone ("Qwen2.5") can name a different license than its size ("72B") does
        parts = [base] + [f[k] for k in ("general.size_label", "general.finetune") if isinstance(f.get(k), str)]
        names.append(("GGUF general.basename", "-".join(p.strip() for p in parts if p.strip())))
    for k in ("general.source.repo_url", "general.source.url", "general.source.huggingface.repository"):
        if isinstance(f.get(k), str):
            names.append((f"GGUF {k}", name_of(f[k])))
    bases = []
    for i in range(64):
        pre = f"general.base_model.{i}"
        keys = [k for k in f if k.startswith(pre + ".")]
        if not keys:
            break
        if isinstance(f.get(pre + ".repo_url"), str):
            bases.append((f"GGUF {pre}.repo_url", name_of(f[pre + ".repo_url"])))
        elif isinstance(f.get(pre + ".name"), str):
            org, name = f.get(pre + ".organization"), f[pre + ".name"]
            bases.append((f"GGUF {pre}.name", f"{org}/{name}" if isinstance(org, str) else name))
    licenses = [("GGUF general.license", v) for v in _as_list(f.get("general.license"))]
    license_names = [("GGUF general.license.name", v) for v in _as_list(f.get("general.license.name"))]
    return _finish(_empty("gguf"), names, bases, licenses, license_names)


def _hf_metadata(path: Path) -> dict:
    cfg = read_json(path / "config.json")
    names = [("config.json _name_or_path", name_of(n)) for n in _as_list(cfg.get("_name_or_path"))]
    fm = front_matter(path / "README.md")
    bases = [("README base_model", name_of(n)) for n in _as_list(fm.get("base_model"))]
    licenses = [("README license", v) for v in _as_list(fm.get("license"))]
    license_names = [("README license_name", v) for v in _as_list(fm.get("license_name"))]
    return _finish(_empty("hf"), names, bases, licenses, license_names)


def model_metadata(path: str | Path) -> dict:
    """What the model at ``path`` (a ``.gguf`` file or a model directory) says about itself.

    Returns a JSON-serialisable dict; a field the model does not state is None (or empty):

    * ``format``: ``"gguf"``, ``"hf"``, or None (``path`` is neither: every other field is empty);
    * ``name``: the model's own name (GGUF ``general.name``, config.json ``_name_or_path``; a path
      counts by its last component, a Hugging Face URL as ``ORG/NAME``);
    * ``license``: the declared license id, lower case (``"apache-2.0"``, ``"llama3.1"``, ``"other"``);
    * ``license_name``: the id that goes with ``license: other`` (``"tongyi-qianwen"``);
    * ``base_model``: the base models named (Hugging Face ids where the metadata gives one);
    * ``source``: for each of ``name``, ``license``, ``license_name``, ``base_model``, the field it was
      read from (``{"name": "GGUF general.name", "license": "GGUF general.license"}``);
    * ``names``: every ``(field, name)`` found, the model's own names before its base models: what
      the terms gate tries, in order.

    A directory with GGUF files and no ``config.json`` is read from its first GGUF file (sorted: the
    first shard of a split model). Raises :class:`UserError` only for a ``.gguf`` file that is not
    a readable GGUF file.
    """
    p = Path(path).expanduser()
    if p.is_file() and p.suffix.lower() == ".gguf":
        return _gguf_metadata(p)
    if not p.is_dir():
        return _empty(None)
    ggufs = sorted(p.glob("*.gguf"))
    if ggufs and not (p / "config.json").is_file():
        return _gguf_metadata(ggufs[0])
    return _hf_metadata(p)

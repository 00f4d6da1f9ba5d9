"""``potstill terms TEACHER``: what a teacher's terms say about training other models on its outputs."""

from __future__ import annotations

import json
import textwrap

from ..errors import UserError
from ..terms import evaluate, load_registry

HELP = "show what a teacher's license or terms allow (training on its outputs, commercial use, obligations)"
DESCRIPTION = HELP + (
    ". TEACHER is a Hugging Face id (meta-llama/Llama-3.1-8B-Instruct), a model name (llama-3.1-70b, gpt-4o), an "
    "API teacher as in the config (openai:gpt-4o-mini, anthropic:claude-3-5-sonnet-20241022) or a local model "
    "directory (its config.json _name_or_path, README front matter and directory name are matched). Verdicts: "
    "allowed, allowed_with_obligations, blocked (a run stops unless the config records terms.acceptance: who, why, "
    "date), unknown (not in the registry: check the license yourself; a run continues with a warning)."
)


def add_parser(sub) -> None:
    p = sub.add_parser("terms", help=HELP, description=DESCRIPTION)
    p.add_argument("teacher", nargs="?", help="the teacher (see above)")
    p.add_argument(
        "--use",
        choices=["train_model", "research", "evaluation"],
        default="train_model",
        help="what the outputs are used for (default: train_model)",
    )
    p.add_argument("--non-commercial", action="store_true", help="the use is non-commercial (terms.commercial: false)")
    p.add_argument(
        "--base-url",
        default=None,
        help="the API teacher's endpoint, if not the provider's own (then the model name alone decides)",
    )
    p.add_argument("--json", action="store_true", help="print the decision as JSON")
    p.add_argument("--list", action="store_true", help="list the registry's entries")
    p.set_defaults(func=main)


def _wrap(label: str, text: str) -> list[str]:
    return textwrap.wrap(
        " ".join(str(text).split()),
        width=100,
        break_on_hyphens=False,
        break_long_words=False,
        initial_indent=f"{label:<14}",
        subsequent_indent=" " * 14,
    )


def _list() -> int:

    reg = load_registry()
    print(f"potstill terms registry, version {reg.version} ({len(reg.entries)} entries)")
    print(f"{'id':<26}{'outputs train':<15}{'commercial':<12}{'checked':<12}license")
    for e in reg.entries:
        print(f"{e.id:<26}{e.outputs_may_train_models:<15}{e.commercial_use:<12}{e.checked.isoformat():<12}{e.license}")
    return 0


def main(args) -> int:

    if args.list:
        return _list()
    if not args.teacher:
        raise UserError("name a TEACHER (or use --list)")
    d = evaluate(args.teacher, args.use, not args.non_commercial, base_dir=".", base_url=args.base_url)
    if args.json:
        print(json.dumps(d.to_dict(), indent=2, default=str))
        return 0
    out = [f"{'teacher':<14}{d.teacher}"]
    use = f"{d.use}, {'commercial' if d.commercial else 'non-commercial'}"
    if d.entry is None:
        out += _wrap("entry", f"none: not in potstill's terms registry (version {d.registry_version})")
        out += _wrap("tried", ", ".join(d.tried) or "nothing")
        out += _wrap(
            "verdict",
            f"unknown ({use}): potstill cannot tell whether its terms allow training on its "
            "outputs; check its license yourself (a run continues with a warning)",
        )
        print("\n".join(out))
        return 0
    e = d.entry
    out += _wrap("entry", f"{e.id} ({e.family}), registry version {d.registry_version}")
    out += _wrap("matched by", d.matched_by or "")
    out += _wrap("license", e.license)
    out += _wrap(
        "outputs",
        {
            "yes": "may train other models",
            "no": "may NOT be used to improve other models",
            "conditional": "may train other models, with the obligations below",
            "no_competing": "may NOT be used to develop models that compete with the provider",
        }[e.outputs_may_train_models]
        + f" ({e.outputs_may_train_models})",
    )
    out += _wrap(
        "commercial",
        {"yes": "allowed", "limited": "allowed, with limits (see obligations)", "no": "not allowed"}[e.commercial_use]
        + f" ({e.commercial_use})",
    )
    verdict = f"{d.verdict} ({use})"
    if d.reasons:
        verdict += (
            ": "
            + "; and ".join(d.reasons)
            + ". A run stops unless the config records terms.acceptance (who, why, date)"
        )
    out += _wrap("verdict", verdict)
    if e.name_prefix:
        out += _wrap("name prefix", f'a distributed student\'s name must start with "{e.name_prefix}"')
    if e.attribution:
        out += _wrap("attribution", f'display "{e.attribution}"')
    if e.obligations:
        out.append("obligations")
        for o in e.obligations:
            out += textwrap.wrap(" ".join(o.split()), width=100, initial_indent="  - ", subsequent_indent="    ")
    else:
        out.append(f"{'obligations':<14}none")
    out += _wrap("clause", f'"{e.clause}"')
    how = (
        "written from the published text without re-fetching it: verify the wording there"
        if e.verification == "recalled"
        else "compared with the page on that date"
    )
    out += _wrap("source", f"{e.source_url} (checked {e.checked.isoformat()}; {how})")
    if e.notes:
        out += _wrap("notes", e.notes)
    print("\n".join(out))
    return 0

"""Teacher terms: a versioned registry of what each teacher's license or terms say about training
other models on its outputs (``registry.yaml``), the gate that stops a run the terms forbid
(unless an acceptance is recorded), and the obligations that travel with the student.

>>> from potstill.terms import evaluate
>>> evaluate("meta-llama/Llama-3.1-8B-Instruct").verdict
'allowed_with_obligations'
"""

from .gate import Decision, evaluate, gate, preflight_terms, terms_provenance
from .metadata import model_metadata
from .registry import Entry, Registry, load_registry, match_teacher, teacher_names

__all__ = [
    "Decision",
    "Entry",
    "Registry",
    "evaluate",
    "gate",
    "load_registry",
    "match_teacher",
    "model_metadata",
    "preflight_terms",
    "teacher_names",
    "terms_provenance",
]

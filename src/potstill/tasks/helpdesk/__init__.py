"""The offline reference domain: support questions about Quillkeep, a fictional note-taking app.

- ``kb``: the knowledge base (``kb.json``), its validation and text normalisation;
- ``queries``: deterministic query generation (train / held-out test / ood / teacher augment);
- ``scorer``: the grader, ``score(answer, record, reference=None) -> float`` (fact accuracy);
- ``answers``: gold answer sentences, used only to train the reference teacher.

See ``examples/helpdesk/README.md``.
"""

from .kb import KB_PATH, Fact, KnowledgeBase, load_kb, normalize
from .queries import generate
from .scorer import score

__all__ = ["KB_PATH", "Fact", "KnowledgeBase", "load_kb", "normalize", "generate", "score"]

"""``potstill serve``: an OpenAI-compatible chat server for local Hugging Face models.

:func:`create_app` wraps any backend (``complete``/``stream``) in the HTTP API;
:class:`HFBackend` answers with a local model, batching concurrent requests; :func:`make_backend`
chooses it or the CTranslate2 backend (``--engine``).
"""

from .app import create_app
from .backend import ChatBackend, HFBackend, model_fingerprint
from .batcher import Batcher
from .ct2backend import CT2Backend, make_backend
from .schemas import APIError, ChatCompletionRequest

__all__ = [
    "APIError",
    "Batcher",
    "CT2Backend",
    "ChatBackend",
    "ChatCompletionRequest",
    "HFBackend",
    "create_app",
    "make_backend",
    "model_fingerprint",
]

"""``potstill serve``: an OpenAI-compatible chat server for local Hugging Face models.

:func:`create_app` wraps any backend (``complete``/``stream``) in the HTTP API;
:class:`HFBackend` answers with a local model, batching concurrent requests.
"""

from .app import create_app
from .backend import ChatBackend, HFBackend, model_fingerprint
from .batcher import Batcher
from .schemas import APIError, ChatCompletionRequest

__all__ = [
    "APIError",
    "Batcher",
    "ChatBackend",
    "ChatCompletionRequest",
    "HFBackend",
    "create_app",
    "model_fingerprint",
]

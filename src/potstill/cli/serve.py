"""``potstill serve MODEL_DIR``: an OpenAI-compatible chat server for a local model."""

from __future__ import annotations

import os
import socket

from ..errors import UserError
from ..progress import say

HELP = "serve a local model with an OpenAI-compatible API (/v1/chat/completions, /v1/models, /health)"


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help=HELP, description=HELP)
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a Hugging Face model directory (config.json + weights)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    p.add_argument("--name", default=None, help="model name clients ask for (default: the directory's name)")
    p.add_argument("--api-key-env", metavar="VAR", default=None,
                   help="require the API key held in environment variable VAR (Authorization: Bearer KEY)")
    p.add_argument("--max-batch", type=int, default=16, help="most requests decoded together (default: 16)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0,
                   help="how long to wait for more requests before starting a batch (default: 5)")
    p.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024,
                   help="larger request bodies get 413 (default: 4 MiB)")
    p.add_argument("--max-tokens", type=int, default=256,
                   help="completion length when a request gives no max_tokens (default: 256)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(func=main)


def main(args) -> int:
    from ..models import check_model_dir

    check_model_dir(args.model_dir)
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise UserError(f"--api-key-env: environment variable {args.api_key_env} is not set or empty")
    for flag, value in (("--max-batch", args.max_batch), ("--max-body-bytes", args.max_body_bytes),
                        ("--max-tokens", args.max_tokens)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1")
    sock = bind(args.host, args.port)

    import uvicorn

    from ..serve import HFBackend, create_app

    backend = HFBackend.from_dir(args.model_dir, model_name=args.name, dtype=args.dtype, device=args.device,
                                 max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                                 default_max_tokens=args.max_tokens)
    app = create_app(backend, api_key=api_key, max_body_bytes=args.max_body_bytes)
    host, port = sock.getsockname()[:2]
    say(f"serve: {backend.model_name} on http://{host}:{port}/v1 (batch ≤ {args.max_batch}, "
        f"{'API key required' if api_key else 'no API key'}); Ctrl-C stops")
    server = uvicorn.Server(uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=5))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after a clean shutdown
        pass
    say("serve: stopped")
    return 0


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or a one-line error (port in use, bad address)."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(128)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    return sock

"""``potstill serve MODEL_DIR``: an OpenAI-compatible chat server for a local model.

``potstill serve --student DIR --fallback TEACHER --route ROUTE.json``: the routing gateway
(:mod:`potstill.route.gateway`): the student answers, and the teacher (a local model directory,
or ``openai:MODEL`` / ``anthropic:MODEL``) answers the queries the calibrated router sends it.
``--engine`` (``hf``, ``ct2``, ``ct2-int8``: :mod:`potstill.engines`) is how the model, or the student,
generates; a local teacher runs on ``hf``.

Stopping: the first SIGTERM or Ctrl-C stops accepting connections and gives the requests in flight
``--grace-s`` seconds (default 5) to finish; whatever is still running then is answered 503
``server_shutting_down`` (a stream ends with that error event). The server then exits with code 0
and one ``serve: stopped ...`` line on stderr. A second Ctrl-C ends the grace at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path

from ..engines import LOCAL_ENGINES
from ..errors import UserError
from ..io import read_json
from ..models import check_model_dir, model_hash
from ..progress import say
from ..route.features import Router
from ..route.gateway import ApiTeacher, FallbackLog, LocalTeacher, RoutingBackend
from ..serve import create_app, make_backend
from ..teachers.api import make_provider, resolve_api_key
from ..teachers.spec import parse_model

DEFAULT_ENGINE = "ct2"  # of the served model and the gateway's student: the fastest exact engine on a CPU
HELP = "serve a local model with an OpenAI-compatible API (/v1/chat/completions, /v1/models, /health)"


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help=HELP, description=HELP)
    p.add_argument(
        "model_dir", metavar="MODEL_DIR", nargs="?", help="a Hugging Face model directory (config.json + weights)"
    )
    g = p.add_argument_group("routing gateway (instead of MODEL_DIR)")
    g.add_argument("--student", metavar="DIR", help="the student model directory that answers first")
    g.add_argument(
        "--fallback", metavar="TEACHER", help="the teacher: a local model directory, or openai:MODEL / anthropic:MODEL"
    )
    g.add_argument("--route", metavar="ROUTE.json", type=Path, help="the route file from `potstill route calibrate`")
    g.add_argument(
        "--fallback-log",
        metavar="PATH",
        type=Path,
        default=None,
        help="JSONL log of every fallback (default: fallbacks.jsonl beside the route file)",
    )
    g.add_argument("--fallback-base-url", metavar="URL", default=None, help="API endpoint of an API teacher")
    g.add_argument(
        "--fallback-key-env", metavar="VAR", default=None, help="environment variable with the API teacher's key"
    )
    g.add_argument(
        "--fallback-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for the teacher before returning the student's answer, flagged (default: 30)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    p.add_argument("--name", default=None, help="model name clients ask for (default: the directory's name)")
    p.add_argument(
        "--api-key-env",
        metavar="VAR",
        default=None,
        help="require the API key held in environment variable VAR (Authorization: Bearer KEY)",
    )
    p.add_argument("--max-batch", type=int, default=16, help="most requests decoded together (default: 16)")
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=5.0,
        help="how long to wait for more requests before starting a batch (default: 5)",
    )
    p.add_argument(
        "--max-body-bytes", type=int, default=4 * 1024 * 1024, help="larger request bodies get 413 (default: 4 MiB)"
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=256,
        help="completion length when a request gives no max_tokens (default: 256)",
    )
    p.add_argument(
        "--grace-s",
        type=float,
        default=5.0,
        help="on SIGTERM/Ctrl-C, seconds the requests in flight get to finish before they are "
        "answered 503 (default: 5)",
    )
    p.add_argument(
        "--engine",
        choices=LOCAL_ENGINES,
        default=DEFAULT_ENGINE,
        help="how MODEL_DIR (or --student) generates: hf (transformers), ct2 (CTranslate2, converted once), "
        f"ct2-int8 (CTranslate2, int8 weights); a local --fallback teacher runs on hf (default: {DEFAULT_ENGINE})",
    )
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(func=main)


def main(args) -> int:

    gateway = any(x is not None for x in (args.student, args.fallback, args.route))
    if gateway and args.model_dir:
        raise UserError("give either MODEL_DIR or --student/--fallback/--route, not both")
    if gateway and not (args.student and args.fallback and args.route):
        raise UserError("the routing gateway needs --student DIR, --fallback TEACHER and --route ROUTE.json")
    if not gateway and not args.model_dir:
        raise UserError("give MODEL_DIR, or --student DIR --fallback TEACHER --route ROUTE.json")
    check_model_dir(args.student or args.model_dir)
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise UserError(f"--api-key-env: environment variable {args.api_key_env} is not set or empty")
    for flag, value in (
        ("--max-batch", args.max_batch),
        ("--max-body-bytes", args.max_body_bytes),
        ("--max-tokens", args.max_tokens),
    ):
        if value < 1:
            raise UserError(f"{flag} must be at least 1")
    if not 0 <= args.grace_s <= 3600:
        raise UserError("--grace-s must be between 0 and 3600 seconds")
    router = load_router(args.route) if gateway else None
    sock = bind(args.host, args.port)

    def local(path, name=None, engine="hf"):
        return make_backend(
            path,
            engine,
            model_name=name,
            dtype=args.dtype,
            device=args.device,
            max_batch=args.max_batch,
            batch_wait_ms=args.batch_wait_ms,
            default_max_tokens=args.max_tokens,
        )

    if gateway:
        teacher = make_teacher(args, local)
        log = FallbackLog(args.fallback_log or args.route.parent / "fallbacks.jsonl")
        student = local(args.student, engine=args.engine)
        backend = RoutingBackend(
            student, teacher, router, log, model_name=args.name, teacher_timeout=args.fallback_timeout
        )
        what = (
            f"gateway {backend.model_name}: {backend.student.model_name} ({args.engine}) first, "
            f"{teacher.model_name} when {router.signal} < {router.threshold:.4g}; fallbacks logged to {log.path}"
        )
    else:
        backend = local(args.model_dir, args.name, args.engine)
        what = f"{backend.model_name} ({args.engine})"
    app = create_app(backend, api_key=api_key, max_body_bytes=args.max_body_bytes)
    host, port = sock.getsockname()[:2]
    say(
        f"serve: {what} on http://{host}:{port}/v1 (batch ≤ {args.max_batch}, "
        f"{'API key required' if api_key else 'no API key'}); Ctrl-C stops"
    )
    say(f"serve: stopped{run_server(app, sock, args.grace_s)}")
    return 0


def run_server(app, sock: socket.socket, grace_s: float) -> str:
    """Serve ``app`` on ``sock`` until SIGTERM/Ctrl-C, drain (see the module docstring); returns how it went."""
    import uvicorn  # defers uvicorn (serving only)

    class DrainingServer(uvicorn.Server):
        stop_signal: int | None = None
        in_flight = cut = 0

        def handle_exit(self, sig, frame) -> None:
            first = self.stop_signal is None
            self.stop_signal = self.stop_signal or sig
            super().handle_exit(sig, frame)
            if not first and self.force_exit:  # Ctrl-C again: no more grace
                self.loop.call_soon_threadsafe(self.abort)

        async def serve(self, sockets=None) -> None:
            self.loop = asyncio.get_running_loop()
            await super().serve(sockets)

        async def shutdown(self, sockets=None) -> None:
            self.in_flight = len(self.server_state.tasks)
            timer = self.loop.call_later(grace_s, self.abort)
            try:
                await super().shutdown(sockets)
            finally:
                timer.cancel()

        def abort(self) -> None:
            backend = app.state.backend
            if hasattr(backend, "abort"):
                self.cut += backend.abort("the server is shutting down")

    server = DrainingServer(uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=grace_s + 10))
    # uvicorn re-raises the stop signal once it has stopped; for SIGTERM that must not kill the process
    # (exit code 0, the summary line), so the handler it restores and re-raises to does nothing.
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: None)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after a clean shutdown
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    parts = [signal.Signals(server.stop_signal).name] if server.stop_signal else []
    parts.append(f"{server.in_flight} request(s) in flight")
    if server.cut:
        parts.append(f"{server.cut} generation(s) cut off after the {grace_s:g} s grace (answered 503)")
    return f" ({'; '.join(parts)})"


def load_router(path: Path):
    """The router of a route file, or one line naming what is wrong with it."""

    if not path.is_file():
        raise UserError("route file not found", str(path))
    try:
        return Router(read_json(path)["router"])
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"not a route file from `potstill route calibrate` ({type(e).__name__}: {e})", str(path)
        ) from None


def make_teacher(args, local):
    """The fallback teacher: an API model (``openai:``/``anthropic:``) or a local model directory."""

    spec = parse_model(
        args.fallback, base_url=args.fallback_base_url, api_key_env=args.fallback_key_env, where="--fallback"
    )
    if spec.is_api:
        key = resolve_api_key(spec.provider, spec.api_key_env, spec.base_url)
        return ApiTeacher(
            make_provider(spec.provider, spec.name, spec.base_url, key, args.fallback_timeout, 32),
            default_max_tokens=args.max_tokens,
        )

    model_hash(spec.path)  # one-line error unless it is a model
    return LocalTeacher(local(str(spec.model_dir())))


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or a one-line error (port in use, bad address)."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM, info[2])  # IPPROTO_TCP: asyncio then sets TCP_NODELAY
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # on each connection
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(info[4])
        sock.listen(128)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    return sock

"""A fault-injecting OpenAI-compatible (and Anthropic Messages) HTTP server for tests and benchmarks.

Plain asyncio HTTP/1.1 with keep-alive, in a background thread (``FaultServer().start()``) or
as a script (``python tests/faultserver.py --latency 0.2`` prints ``PORT n``). Answers are
deterministic: the words ``echo <prompt words>`` cut at ``max_tokens`` (then
``finish_reason=length``), one "token" per word, with top log-probs when asked.

With probability ``fail_rate`` a request gets one of ``faults``: ``429`` (with ``Retry-After``),
``500`` (500 or 503), ``slow`` (answers after ``slow_s``, past the client's timeout),
``malformed`` (200 with truncated JSON) or ``drop`` (connection closed without an answer, or
mid-body). Every request is logged as ``{"t", "prompt", "outcome"}`` (``ok`` when a complete
answer was written), so tests can prove that no prompt was asked again after it was answered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import threading
import time

FAULTS = ("429", "500", "slow", "malformed", "drop")
REASONS = {
    200: "OK",
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def expected_text(prompt: str, max_tokens: int) -> tuple[str, str]:
    """The answer the server gives to ``prompt``: (text, finish_reason)."""
    words = ["echo", *prompt.split()]
    return " ".join(words[:max_tokens]), "length" if len(words) > max_tokens else "stop"


class FaultServer:
    """See the module docstring; ``base_url`` is the OpenAI-style URL (``.../v1``), ``root`` the Anthropic one."""

    def __init__(
        self,
        fail_rate: float = 0.0,
        faults=FAULTS,
        latency: float = 0.0,
        retry_after: str = "1",
        slow_s: float = 5.0,
        seed: int = 0,
        api_key: str | None = None,
        models=("test-model",),
        port: int = 0,
        always_fail=(),
    ):
        self.fail_rate, self.faults, self.latency = fail_rate, tuple(faults), latency
        self.retry_after, self.slow_s, self.api_key, self.models = retry_after, slow_s, api_key, set(models)
        self.always_fail = set(always_fail)  # prompts that always get a 500
        self.rng = random.Random(seed)
        self.port = port
        self.log: list[dict] = []
        self._loop = self._server = self._thread = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> FaultServer:
        ready = threading.Event()

        def serve():
            self._loop = asyncio.new_event_loop()
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._conn, "127.0.0.1", self.port, backlog=512)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return

        async def shutdown():
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root + "/v1"

    def outcomes(self, prompt: str | None = None) -> list[str]:
        return [e["outcome"] for e in list(self.log) if prompt is None or e["prompt"] == prompt]

    # -- HTTP ---------------------------------------------------------------------------------
    async def _conn(self, reader, writer):
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                n = int(headers.get("content-length", 0) or 0)
                body = await reader.readexactly(n) if n else b""
                if not await self._handle(method, target.split("?")[0], headers, body, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    async def _send(self, writer, status: int, obj=None, raw: bytes | None = None, headers: dict | None = None):
        data = raw if raw is not None else json.dumps(obj).encode()
        head = f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {len(data)}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        writer.write(head.encode() + b"\r\n" + data)
        await writer.drain()

    async def _handle(self, method, path, headers, body, writer) -> bool:
        if method == "GET" and path == "/v1/models":
            await self._send(
                writer, 200, {"object": "list", "data": [{"id": m, "object": "model"} for m in sorted(self.models)]}
            )
            return True
        kind = {"/v1/chat/completions": "openai", "/v1/messages": "anthropic"}.get(path)
        if method != "POST" or kind is None:
            await self._send(writer, 404, {"error": {"message": f"no route {method} {path}"}})
            return True
        req = json.loads(body)
        prompt = next((m["content"] for m in reversed(req.get("messages", [])) if m.get("role") == "user"), "")
        entry = {"t": time.time(), "prompt": prompt, "outcome": "?", "api": kind}
        self.log.append(entry)
        key = (
            headers.get("authorization", "").removeprefix("Bearer ")
            if kind == "openai"
            else headers.get("x-api-key", "")
        )
        if self.api_key is not None and key != self.api_key:
            entry["outcome"] = "401"
            await self._send(
                writer, 401, {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}
            )
            return True
        if req.get("model") not in self.models:
            entry["outcome"] = "404"
            await self._send(
                writer,
                404,
                {"error": {"message": f"The model `{req.get('model')}` does not exist", "code": "model_not_found"}},
            )
            return True
        fault = self.rng.choice(self.faults) if self.faults and self.rng.random() < self.fail_rate else None
        fault = "500" if prompt in self.always_fail else fault
        entry["outcome"] = fault or "ok"
        if fault == "429":
            await self._send(
                writer, 429, {"error": {"message": "Rate limit reached"}}, headers={"Retry-After": self.retry_after}
            )
            return True
        if fault == "500":
            await self._send(writer, self.rng.choice([500, 503]), {"error": {"message": "The server had an error"}})
            return True
        if fault == "drop":
            if self.rng.random() < 0.5:
                writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n{"id": ')
                await writer.drain()
            return False
        await asyncio.sleep(self.slow_s if fault == "slow" else self.latency)
        answer = self._answer(kind, req, prompt)
        if fault == "malformed":
            data = json.dumps(answer).encode()
            await self._send(writer, 200, raw=data[: len(data) // 2])
            return True
        await self._send(writer, 200, answer)
        return True

    def _answer(self, kind: str, req: dict, prompt: str) -> dict:
        max_tokens = int(req.get("max_tokens", 16))
        text, finish = expected_text(prompt, max_tokens)
        n_in = sum(len(str(m.get("content", "")).split()) for m in req.get("messages", [])) + len(
            req.get("system", "").split()
        )
        n_out = len(text.split())
        if kind == "anthropic":
            return {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": req["model"],
                "content": [{"type": "text", "text": text}],
                "stop_reason": "max_tokens" if finish == "length" else "end_turn",
                "usage": {"input_tokens": n_in, "output_tokens": n_out},
            }
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        k = int(req.get("top_logprobs") or 0)
        if req.get("logprobs") and k:
            toks = [w if i == 0 else " " + w for i, w in enumerate(text.split())]
            choice["logprobs"] = {
                "content": [
                    {
                        "token": t,
                        "logprob": -0.05,
                        "bytes": list(t.encode()),
                        "top_logprobs": [{"token": t, "logprob": -0.05, "bytes": list(t.encode())}]
                        + [
                            {"token": f" alt{j}", "logprob": -3.0 - j, "bytes": list(f" alt{j}".encode())}
                            for j in range(1, k)
                        ],
                    }
                    for t in toks
                ]
            }
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": req["model"],
            "choices": [choice],
            "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out},
        }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--fail-rate", type=float, default=0.0)
    ap.add_argument("--slow-s", type=float, default=5.0)
    ap.add_argument("--retry-after", default="1")
    a = ap.parse_args()
    srv = FaultServer(a.fail_rate, latency=a.latency, slow_s=a.slow_s, retry_after=a.retry_after, port=a.port).start()
    print(f"PORT {srv.port}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        srv.stop()

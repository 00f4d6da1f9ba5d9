"""Schema-driven fuzzing of ``potstill serve``: Schemathesis generates requests from the OpenAPI
document the server publishes (``/openapi.json``) and sends them to a live server on loopback.

Any request a client can send must get a non-5xx answer in the documented shape, and the server
must stay healthy afterwards. Bounded for CI: a tiny model with a 64-token context (so no valid
request decodes for long), 250 examples in all, a fixed seed (the same examples on every run).
"""

from __future__ import annotations

import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
FUZZ = settings(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, make_tiny_llama, serve_model):
    model_dir = make_tiny_llama(tmp_path_factory.mktemp("fuzz_model"), hidden=16, max_positions=64, seed=3)
    url, _ = serve_model(model_dir, name="tiny", max_body_bytes=64 * 1024, default_max_tokens=8, batch_wait_ms=1)
    return url


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    return schemathesis.openapi.from_url(fuzz_server + "/openapi.json")


def cases(schema) -> st.SearchStrategy:
    """Requests that fit the schema and requests that break it (wrong types, out of range, unknown roles)."""
    return st.one_of(schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE))


def test_schema_describes_the_chat_request(fuzz_server):
    spec = httpx.get(fuzz_server + "/openapi.json").json()
    body = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    parts = spec["components"]["schemas"]
    assert parts["ChatCompletionRequest"]["required"] == ["messages"]
    assert parts["ChatMessage"]["properties"]["role"]["enum"] == ["system", "user", "assistant", "developer"]


def test_fuzz_chat_completions(api_schema):
    @given(cases(api_schema.include(path="/v1/chat/completions")))
    @settings(FUZZ, max_examples=220)
    def fuzz(case):
        case.call_and_validate(checks=CHECKS, timeout=30)

    fuzz()


def test_fuzz_other_routes(api_schema):
    @given(cases(api_schema.exclude(path="/v1/chat/completions")))
    @settings(FUZZ, max_examples=30)
    def fuzz(case):
        case.call_and_validate(checks=CHECKS, timeout=30)

    fuzz()


def test_healthy_after_fuzzing(fuzz_server):
    deadline = time.monotonic() + 10
    while True:
        health = httpx.get(fuzz_server + "/health", timeout=10).json()
        if (health["stats"]["waiting"], health["stats"]["running"]) == (0, 0) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert health["status"] == "ok" and (health["stats"]["waiting"], health["stats"]["running"]) == (0, 0)
    r = httpx.post(
        fuzz_server + "/v1/chat/completions",
        timeout=30,
        json={"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
    )
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")

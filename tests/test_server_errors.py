"""Hardened input handling: every bad request gets an OpenAI error object with the right status
and a message naming the field, and the server keeps serving afterwards."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import openai
import pytest
from server_helpers import LiveServer, load_served_model

from streaming_dllm.server import Limits, ServerSettings
from streaming_dllm.server import batcher as batcher_module

MODEL = "builtin"
KEY = "sk-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
MSG = [{"role": "user", "content": "Tom has 3 apples. Tom loses 1 apple. How many apples does Tom have now?"}]


def comp(**kw):
    return {"model": MODEL, "prompt": "Tom has 3 apples.", "max_tokens": 8, **kw}


def chat(**kw):
    return {"model": MODEL, "messages": MSG, "max_tokens": 8, **kw}


# (case id, path, body: dict | bytes, headers, status, param, words in the message)
CASES = [
    ("malformed json", COMP, b'{"model": "builtin", "prompt": ', AUTH, 400, None, "not valid JSON"),
    ("body not an object", COMP, b"[1, 2, 3]", AUTH, 400, None, "JSON object"),
    ("missing model", COMP, {"prompt": "hi"}, AUTH, 422, "model", "required"),
    ("missing prompt", COMP, {"model": MODEL}, AUTH, 422, "prompt", "required"),
    ("missing messages", CHAT, {"model": MODEL}, AUTH, 422, "messages", "required"),
    ("max_tokens as string", COMP, comp(max_tokens="8"), AUTH, 422, "max_tokens", "integer"),
    ("max_tokens as bool", COMP, comp(max_tokens=True), AUTH, 422, "max_tokens", "integer"),
    ("max_tokens as float", COMP, comp(max_tokens=8.5), AUTH, 422, "max_tokens", "integer"),
    ("temperature as string", CHAT, chat(temperature="hot"), AUTH, 422, "temperature", "number"),
    ("stream as string", CHAT, chat(stream="yes"), AUTH, 422, "stream", "boolean"),
    ("messages not a list", CHAT, chat(messages="hello"), AUTH, 422, "messages", "array"),
    ("message without content", CHAT, chat(messages=[{"role": "user"}]), AUTH, 422, "messages.0.content",
     "required"),
    ("unknown role", CHAT, chat(messages=[{"role": "wizard", "content": "hi"}]), AUTH, 422,
     "messages.0.role", "user"),
    ("prompt as number", COMP, comp(prompt=5), AUTH, 422, "prompt", "must be a string, a list of strings"),
    ("prompt mixing text and ids", COMP, comp(prompt=["a", [1]]), AUTH, 422, "prompt", "token-id lists"),
    ("stop as number", COMP, comp(stop=7), AUTH, 422, "stop", "a string or a list of strings"),
    ("image content part", CHAT,
     chat(messages=[{"role": "user", "content": [{"type": "image_url", "text": "x"}]}]), AUTH, 422,
     "messages.0.content", "'type': 'text'"),
    ("unknown field", COMP, comp(max_tokenz=8), AUTH, 422, "max_tokenz", "unknown field"),
    ("empty messages", CHAT, chat(messages=[]), AUTH, 400, "messages", "at least one"),
    ("empty message content", CHAT, chat(messages=[{"role": "user", "content": "  "}]), AUTH, 400,
     "messages.0.content", "empty"),
    ("empty prompt", COMP, comp(prompt=""), AUTH, 400, "prompt", "empty"),
    ("empty prompt list", COMP, comp(prompt=[]), AUTH, 400, "prompt", "empty"),
    ("token ids outside the vocabulary", COMP, comp(prompt=[1, 2, 10**9]), AUTH, 400, "prompt", "token ids"),
    ("unknown model", COMP, comp(model="gpt-5"), AUTH, 404, "model", "does not exist"),
    ("negative max_tokens", COMP, comp(max_tokens=-5), AUTH, 400, "max_tokens", "must be in [1, 64]"),
    ("zero max_tokens", CHAT, chat(max_tokens=0), AUTH, 400, "max_tokens", "must be in [1, 64]"),
    ("huge max_tokens", COMP, comp(max_tokens=10**12), AUTH, 400, "max_tokens", "must be in [1, 64]"),
    ("huge max_completion_tokens", CHAT, chat(max_tokens=None, max_completion_tokens=10**6), AUTH, 400,
     "max_completion_tokens", "must be in"),
    ("absurd n", COMP, comp(n=10_000), AUTH, 400, "n", "must be in [1, 4]"),
    ("zero n", CHAT, chat(n=0), AUTH, 400, "n", "must be in [1, 4]"),
    ("too many prompts x n", COMP, comp(prompt=["a b"] * 3, n=4), AUTH, 400, "n", "choices"),
    ("over-long prompt", COMP, comp(prompt="one two three four five six seven eight nine ten " * 40), AUTH,
     400, "prompt", "more than the limit of 64"),
    ("over-long chat", CHAT, chat(messages=[{"role": "user", "content": "Tom has apples. " * 60}]), AUTH,
     400, "messages", "more than the limit of 64"),
    ("unknown method", COMP, comp(method="turbo"), AUTH, 400, "method", "must be one of"),
    ("zero block_length", COMP, comp(block_length=0), AUTH, 400, "block_length", "must be in [1, 32]"),
    ("huge block_length", COMP, comp(block_length=4096), AUTH, 400, "block_length", "must be in [1, 32]"),
    ("threshold above 1", COMP, comp(threshold=1.5), AUTH, 400, "threshold", "(0, 1]"),
    ("zero threshold", CHAT, chat(threshold=0), AUTH, 400, "threshold", "(0, 1]"),
    ("negative alpha", COMP, comp(alpha=-0.1), AUTH, 400, "alpha", "[0, 1]"),
    ("negative window", COMP, comp(window=-3), AUTH, 400, "window", "must be in [0, 256]"),
    ("block_length as string", COMP, comp(block_length="16"), AUTH, 422, "block_length", "integer"),
    ("temperature too high", COMP, comp(temperature=7.0), AUTH, 400, "temperature", "[0, 2.0]"),
    ("too many stop strings", COMP, comp(stop=["a", "b", "c", "d", "e"]), AUTH, 400, "stop", "at most 4"),
    ("empty stop string", COMP, comp(stop=[""]), AUTH, 400, "stop", "empty"),
    ("top_p", CHAT, chat(top_p=0.5), AUTH, 400, "top_p", "only 1"),
    ("logprobs", COMP, comp(logprobs=3), AUTH, 400, "logprobs", "not supported"),
    ("tools", CHAT, chat(tools=[{"type": "function"}]), AUTH, 400, "tools", "not supported"),
    ("stream_options without stream", COMP, comp(stream_options={"include_usage": True}), AUTH, 400,
     "stream_options", "stream: true"),
    ("body too large", COMP, comp(prompt="x" * 5000), AUTH, 413, None, "larger than the limit"),
    ("missing API key", COMP, comp(), {}, 401, "authorization", "missing API key"),
    ("wrong API key", CHAT, chat(), {"Authorization": "Bearer sk-wrong"}, 401, "authorization",
     "invalid API key"),
    ("not a bearer key", COMP, comp(), {"Authorization": f"Basic {KEY}"}, 401, "authorization", "missing"),
]


@pytest.fixture(scope="module")
def model_tok():
    return load_served_model()


@pytest.fixture(scope="module")
def server(model_tok):
    limits = Limits(max_body_bytes=4096, max_prompt_tokens=64, max_tokens=64, default_max_tokens=8, max_n=4,
                    max_prompts=4, max_batch_size=8, max_block_length=32, max_window=256)
    settings = ServerSettings(model_name=MODEL, api_key=KEY, shared_overrides={"block_length": 8},
                              limits=limits)
    with LiveServer(*model_tok, settings) as srv:
        yield srv


def assert_error(r: httpx.Response, status: int, param: str | None, words: str) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param
    assert words in err["message"]
    if param:
        assert param in err["message"]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_request(server, case):
    _, path, body, headers, status, param, words = case
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **headers}
    r = httpx.post(server.url + path, content=content, headers=headers)
    assert_error(r, status, param, words)


def test_routes_and_methods(server):
    r = httpx.get(server.url + "/v1/nothing-here", headers=AUTH)
    assert r.status_code == 404 and "no route" in r.json()["error"]["message"]
    r = httpx.get(server.url + COMP, headers=AUTH)
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
    assert_error(httpx.get(server.url + "/v1/models/gpt-5", headers=AUTH), 404, "model", "does not exist")
    assert_error(httpx.get(server.url + "/v1/models"), 401, "authorization", "missing API key")
    assert_error(httpx.get(server.url + "/metrics"), 401, "authorization", "missing API key")
    assert httpx.get(server.url + "/health").status_code == 200


def test_openai_client_sees_typed_errors(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=-1)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="hi")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.UnprocessableEntityError):
        client.completions.create(model=MODEL, prompt="hi", extra_body={"window": "wide"})


def test_server_still_serves_after_bad_input(server):
    """Run after the table: health answers, and good and bad requests side by side do not interfere."""
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)

    async def run():
        good = [client.completions.create(model=MODEL, prompt="Mia has 5 coins.", max_tokens=8, temperature=0)
                for _ in range(4)]
        bad = [client.completions.create(model=MODEL, prompt="Mia has 5 coins.", max_tokens=8,
                                         extra_body={"threshold": 2.0}) for _ in range(4)]
        return await asyncio.gather(*good, *bad, return_exceptions=True)

    results = asyncio.run(run())
    texts = [r.choices[0].text for r in results[:4]]
    assert len(set(texts)) == 1
    assert all(isinstance(r, openai.BadRequestError) for r in results[4:])


def test_full_queue_answers_429_at_once(model_tok):
    limits = Limits(max_queue=1, max_batch_size=1, batch_wait_ms=0, max_tokens=32)
    settings = ServerSettings(model_name=MODEL, method="vanilla", shared_overrides={"block_length": 16},
                              limits=limits)
    with LiveServer(*model_tok, settings) as srv:
        body = {"model": MODEL, "prompt": "Tom has 3 apples.", "max_tokens": 32, "temperature": 0}

        async def one(client: httpx.AsyncClient) -> tuple[int, float, dict]:
            t = time.perf_counter()
            r = await client.post(srv.url + COMP, json=body, timeout=120)
            if r.status_code == 429:
                assert r.headers["retry-after"] == "1"
            return r.status_code, time.perf_counter() - t, r.json()

        async def run():
            async with httpx.AsyncClient() as client:
                return await asyncio.gather(*(one(client) for _ in range(8)))

        results = asyncio.run(run())
        codes = sorted(c for c, _, _ in results)
        assert set(codes) <= {200, 429} and 200 in codes and 429 in codes, codes
        slowest_ok = max(t for c, t, _ in results if c == 200)
        for code, took, payload in results:
            if code == 429:
                assert payload["error"]["type"] == "rate_limit_error"
                assert "queued" in payload["error"]["message"]
                assert took < slowest_ok
        assert httpx.get(srv.url + "/health").json()["status"] == "ok"
        assert "sdllm_queue_full_rejections_total" in httpx.get(srv.url + "/metrics").text


def test_engine_failure_fails_only_its_request(model_tok, monkeypatch):
    """A request that makes the engine raise is answered 500; its batch-mates are re-run alone."""
    poison = [5, 6, 7, 8, 9]
    real = batcher_module.stream

    def flaky(model, rows, cfg, **kwargs):
        if poison in rows:
            raise RuntimeError("engine failure for the poisoned prompt")
        yield from real(model, rows, cfg, **kwargs)

    monkeypatch.setattr(batcher_module, "stream", flaky)
    settings = ServerSettings(model_name=MODEL, shared_overrides={"block_length": 8},
                              limits=Limits(batch_wait_ms=300, max_tokens=16), batching="same-settings")
    good = [[20, 21, 22, 23], [30, 31, 32], [40, 41, 42, 43, 44]]
    with LiveServer(*model_tok, settings) as srv:
        def body(p):
            return {"model": MODEL, "prompt": p, "max_tokens": 16, "temperature": 0}

        async def run():
            async with httpx.AsyncClient(timeout=120) as c:
                return await asyncio.gather(*(c.post(srv.url + COMP, json=body(p)) for p in [*good, poison]))

        together = asyncio.run(run())
        assert together[-1].status_code == 500
        assert together[-1].json()["error"]["code"] == "decoding_failed"
        assert [r.status_code for r in together[:-1]] == [200, 200, 200]
        alone = [httpx.post(srv.url + COMP, json=body(p), timeout=120).json() for p in good]
        assert [r.json()["choices"][0]["text"] for r in together[:-1]] == [a["choices"][0]["text"]
                                                                          for a in alone]
        metrics = httpx.get(srv.url + "/metrics").text
        buckets = dict(re.findall(r'^sdllm_batch_rows_bucket\{le="([^"]+)"\} (\S+)$', metrics, re.M))
        assert float(buckets["4.0"]) - float(buckets["2.0"]) == 1  # the four were decoded as one batch

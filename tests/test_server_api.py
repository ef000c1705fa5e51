"""The server through the official openai client: completions, chat, streaming, stop, n, seed."""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from server_helpers import LiveServer, load_served_model

import streaming_dllm as sd
from streaming_dllm.server import Limits, ServerSettings
from streaming_dllm.server import batcher as batcher_module

MODEL = "builtin"
QUESTION = "Tom has 12 apples. Tom finds 7 more apples. How many apples does Tom have now?"
# /v1/completions takes raw text: the built-in model answers a question in its chat format.
PROMPT = sd.load_tokenizer("builtin").apply_chat_template(
    [{"role": "user", "content": QUESTION}], add_generation_prompt=True, tokenize=False
)
MESSAGES = [{"role": "user", "content": QUESTION}]


@pytest.fixture(scope="module")
def model_tok():
    return load_served_model()


@pytest.fixture(scope="module")
def server(model_tok):
    settings = ServerSettings(model_name=MODEL, shared_overrides={"block_length": 16},
                              limits=Limits(default_max_tokens=32, max_tokens=128))
    with LiveServer(*model_tok, settings) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def joined_completion(stream) -> tuple[str, str | None, list]:
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return text, (reasons[-1] if reasons else None), chunks


def joined_chat(stream) -> tuple[dict[int, str], dict[int, str], list]:
    chunks = list(stream)
    text: dict[int, str] = {}
    reasons: dict[int, str] = {}
    for c in chunks:
        for ch in c.choices:
            text[ch.index] = text.get(ch.index, "") + (ch.delta.content or "")
            if ch.finish_reason:
                reasons[ch.index] = ch.finish_reason
    return text, reasons, chunks


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL


def test_completion_streamed_equals_non_streamed(client):
    kw = dict(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0)
    full = client.completions.create(**kw)
    choice = full.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert full.usage.prompt_tokens > 0
    assert 0 < full.usage.completion_tokens <= 40
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens
    text, reason, chunks = joined_completion(client.completions.create(
        **kw, stream=True, stream_options={"include_usage": True}))
    assert text == choice.text
    assert reason == choice.finish_reason
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    # one chunk per finished block at most (40 tokens = 3 blocks of 16) plus the usage chunk
    assert len(chunks) <= 3 + 1


def test_chat_streamed_equals_non_streamed(client):
    kw = dict(model=MODEL, messages=MESSAGES, max_tokens=48, temperature=0)
    full = client.chat.completions.create(**kw)
    msg = full.choices[0].message
    assert msg.role == "assistant" and msg.content
    text, reasons, chunks = joined_chat(client.chat.completions.create(**kw, stream=True))
    assert text[0] == msg.content
    assert reasons[0] == full.choices[0].finish_reason
    assert chunks[0].choices[0].delta.role == "assistant"


def test_answer_is_the_engine_output(model_tok, client):
    """The server adds nothing: its text is the engine's tokens for the same prompt and config,
    decoded up to the first end token and cut at max_tokens."""
    model, tok = model_tok
    ids = tok(tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False),
              add_special_tokens=False)["input_ids"]
    cfg = sd.DecodeConfig.preset("streaming", block_length=16, gen_length=48)
    generated = sd.generate(model, [ids], cfg).generated(0)
    ends = {model.config["eos_token_id"], model.config.get("eot_token_id", model.config["eos_token_id"])}
    kept = next((generated[:i] for i, t in enumerate(generated) if t in ends), generated)[:40]
    out = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=40, temperature=0)
    assert out.choices[0].message.content == tok.decode(kept, skip_special_tokens=True)
    assert out.usage.prompt_tokens == len(ids) and out.usage.completion_tokens == len(kept)


def test_max_tokens_cuts_inside_a_block(client):
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0)
    longer = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, temperature=0)
    assert out.usage.completion_tokens <= 5
    if out.choices[0].finish_reason == "length":
        assert out.usage.completion_tokens == 5
    # 5 and 16 tokens decode the same 16-token block; the shorter answer is its start
    assert longer.choices[0].text.startswith(out.choices[0].text)


def test_stop_strings_cut_the_text(client):
    base = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=32, temperature=0).choices[0].text
    assert len(base) >= 6, base
    stop = base[3:6]
    cut = base[: base.find(stop)]
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=32, temperature=0,
                                    stop=[stop, "@@"])
    assert out.choices[0].text == cut
    assert out.choices[0].finish_reason == "stop"
    text, reason, _ = joined_completion(client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=32, temperature=0, stop=stop, stream=True))
    assert (text, reason) == (cut, "stop")


def test_n_and_seed_are_reproducible(client):
    kw = dict(model=MODEL, messages=MESSAGES, max_tokens=16, temperature=2.0, n=3, seed=1234)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    text, _, _ = joined_chat(client.chat.completions.create(**kw, stream=True))
    assert [text.get(i, "") for i in range(3)] == [c.message.content for c in a.choices]
    other = client.chat.completions.create(**{**kw, "seed": 99})
    assert [c.message.content for c in other.choices] != [c.message.content for c in a.choices]


def test_several_prompts_in_one_completion_request(client):
    prompts = [PROMPT, "Mia has 5 coins. Mia loses 2 coins. How many coins does Mia have now?"]
    out = client.completions.create(model=MODEL, prompt=prompts, max_tokens=16, temperature=0, n=2)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    alone = [client.completions.create(model=MODEL, prompt=p, max_tokens=16, temperature=0).choices[0].text
             for p in prompts]
    assert [c.text for c in out.choices] == [alone[0], alone[0], alone[1], alone[1]]


@pytest.mark.parametrize("knobs", [
    {"method": "vanilla", "block_length": 8},
    {"method": "fast-dllm", "threshold": 0.7},
    {"method": "fast-dllm-dual"},
    {"method": "streaming", "alpha": 0.5, "window": 8, "block_length": 8},
])
def test_decoding_knobs_as_extra_body(client, knobs):
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, temperature=0,
                                    extra_body=knobs)
    assert out.choices[0].finish_reason in ("stop", "length")
    text, _, _ = joined_completion(client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=16, temperature=0, extra_body=knobs, stream=True))
    assert text == out.choices[0].text


def test_metrics_exposes_counters(server, client):
    client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8)
    body = httpx.get(server.url + "/metrics").text
    for name in ("sdllm_requests_total", "sdllm_generated_tokens_total", "sdllm_forward_passes_total",
                 "sdllm_queue_depth", "sdllm_request_latency_seconds_bucket", "sdllm_batch_rows_bucket"):
        assert name in body, name
    assert 'sdllm_requests_total{endpoint="/v1/completions",status="200"}' in body


def test_sse_wire_format(server):
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 32, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    assert all(p["object"] == "text_completion" for p in payloads)
    assert payloads[-1]["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_frees_the_batch(model_tok, monkeypatch, stream):
    """A client that times out mid-block leaves: its row stops decoding within a step
    (same-settings batching; test_server_continuous.py checks the continuous engine).

    The real engine decodes with the vanilla method (one token per forward, no early exit) and
    256-token blocks, so the first block alone costs 256 forwards; a forward hook on the served
    model counts how many actually ran before the engine let go of the request."""
    state = {"forwards": 0, "closed": False}
    real_stream = batcher_module.stream

    def watched(*args, **kwargs):
        try:
            yield from real_stream(*args, **kwargs)
        finally:
            state["closed"] = True

    monkeypatch.setattr(batcher_module, "stream", watched)
    model = model_tok[0]
    hook = model.register_forward_pre_hook(lambda *_: state.__setitem__("forwards", state["forwards"] + 1))
    settings = ServerSettings(model_name=MODEL, limits=Limits(max_tokens=1024), batching="same-settings")
    try:
        with LiveServer(*model_tok, settings) as srv:
            body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 512, "stream": stream,
                    "method": "vanilla", "block_length": 256}
            with pytest.raises(httpx.ReadTimeout):
                if stream:
                    with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=0.5) as r:
                        next(r.iter_lines())
                else:
                    httpx.post(srv.url + "/v1/completions", json=body, timeout=0.5)
            deadline = time.monotonic() + 60
            while not state["closed"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert state["closed"], "the engine never let go of the abandoned request"
            assert 0 < state["forwards"] < 256, state
            assert httpx.get(srv.url + "/health").json()["running"] == 0
            metrics = httpx.get(srv.url + "/metrics").text
            assert "sdllm_client_disconnects_total 1.0" in metrics
            assert "sdllm_forward_passes_total" in metrics
    finally:
        hook.remove()


def test_server_serves_after_a_disconnect(server, client):
    """A real decode after a client left mid-stream: the server answers normally."""
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 64, "stream": True, "block_length": 8}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
        next(r.iter_lines())
    ok = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8)
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_health_answers_during_inference(model_tok):
    """A 64-step decode (one vanilla block: every step commits one token, whatever the model
    says) runs on the worker thread while /health keeps answering at once."""
    settings = ServerSettings(model_name=MODEL, method="vanilla", shared_overrides={"block_length": 64},
                              limits=Limits(max_tokens=64))
    with LiveServer(*model_tok, settings) as srv:
        body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 64, "temperature": 0}
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, srv.url + "/v1/completions", json=body, timeout=120)
            polls = []
            while not pending.done():
                t = time.perf_counter()
                running = httpx.get(srv.url + "/health", timeout=5).json()["running"]
                polls.append((running, time.perf_counter() - t))
                time.sleep(0.02)
            assert pending.result().status_code == 200
        during = [took for running, took in polls if running]
        assert len(during) >= 3, polls
        assert max(during) < 0.5, during


def _stream_chat(url: str, body: dict) -> list[tuple[str, str | None]]:
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    with httpx.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}, timeout=120) as r:
        for line in r.iter_lines():
            if not line or line == "data: [DONE]":
                continue
            for c in json.loads(line[6:])["choices"]:
                texts[c["index"]] = texts.get(c["index"], "") + (c["delta"].get("content") or "")
                reasons[c["index"]] = c["finish_reason"] or reasons.get(c["index"])
    return [(texts.get(i, ""), reasons.get(i)) for i in range(body.get("n", 1))]


@pytest.mark.parametrize("seed", range(12))
def test_streamed_equals_non_streamed_across_knobs(server, seed):
    """Random methods, block lengths, max_tokens, n, sampling and stop strings: the stream joined
    is the non-streamed answer, choice by choice, finish reasons included."""
    rng = random.Random(seed)
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": rng.choice([1, 3, 7, 16, 33]),
            "method": rng.choice(["vanilla", "prefix-cache", "fast-dllm", "fast-dllm-dual", "streaming",
                                  "streaming-dual"]),
            "block_length": rng.choice([1, 3, 8, 16]), "temperature": rng.choice([0, 0.7]),
            "n": rng.choice([1, 2]), "seed": rng.randint(0, 10**9),
            "stop": rng.choice([[], ["="], ["\n"], ["answer", "is"]])}
    full = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120).json()
    want = [(c["message"]["content"], c["finish_reason"]) for c in full["choices"]]
    assert _stream_chat(server.url, body) == want

"""Hardening of the server: one place builds a request's config, the model flags reach the
loader, a dead worker refuses work, and clients that stall or vanish mid-body are no server error."""

from __future__ import annotations

import logging
import re
import shutil
import socket
import time

import httpx
import pytest
import torch
from safetensors.torch import load_file
from server_helpers import LiveServer, load_served_model

import streaming_dllm as sd
from streaming_dllm.cli import main as cli_main
from streaming_dllm.server import Limits, ServerSettings
from streaming_dllm.server import batcher as batcher_module
from streaming_dllm.server.errors import APIError
from streaming_dllm.server.requests import Translator
from streaming_dllm.server.schemas import CompletionRequest

MODEL = "builtin"
KEY = "sk-hardening"
AUTH = {"Authorization": f"Bearer {KEY}"}
COMP = "/v1/completions"


# --- one function builds a request's DecodeConfig -------------------------------------------------

def test_request_config_is_the_preset_then_server_then_request_knobs():
    s = ServerSettings(method="streaming", shared_overrides={"block_length": 8},
                       method_overrides={"window": 16})
    cfg = s.decode_config("streaming", {"threshold": 0.8}, max_tokens=20)
    want = sd.DecodeConfig.preset("streaming", block_length=8, window=16, threshold=0.8).for_budget(20)
    assert cfg == want and cfg.gen_length == 24
    other = s.decode_config("fast-dllm", {"block_length": 3}, max_tokens=7)
    assert (other.window, other.block_length, other.gen_length) == (None, 3, 9)
    assert s.base_config() == s.decode_config(max_tokens=1)


def _translator(**limits) -> Translator:
    settings = ServerSettings(model_name=MODEL, limits=Limits(**limits))
    return Translator(settings, tokenizer=None, vocab_size=100)


def _refusal(tr: Translator, **body) -> APIError:
    body.setdefault("prompt", [1, 2, 3])
    with pytest.raises(APIError) as e:
        tr.completion(CompletionRequest(model=MODEL, **body))
    return e.value


def test_config_errors_name_the_request_field():
    tr = _translator(max_tokens=65536)
    # 65536 tokens in blocks of 3 round up past the longest gen_length: the request's max_tokens.
    err = _refusal(tr, max_tokens=65536, block_length=3)
    assert (err.status, err.param) == (400, "max_tokens") and err.message.startswith("max_tokens: ")
    assert _refusal(tr, threshold=0.0).param == "threshold"
    assert _refusal(tr, alpha=1.5).param == "alpha"
    assert _refusal(_translator(max_block_length=8), block_length=9).message == \
        "block_length: must be in [1, 8], got 9"
    plan = tr.completion(CompletionRequest(model=MODEL, prompt=[1, 2, 3], max_tokens=5, block_length=4))
    assert plan.cfg.gen_length == 8


def test_prompt_plus_generation_beyond_the_context_is_a_400():
    settings = ServerSettings(model_name=MODEL, shared_overrides={"block_length": 8})
    tr = Translator(settings, tokenizer=None, vocab_size=100, max_context=64)
    err = _refusal(tr, prompt=[1] * 40, max_tokens=25)  # 40 + 32 positions do not fit, 40 + 24 do
    assert (err.status, err.param, err.code) == (400, "prompt", "context_length_exceeded")
    assert "context of 64" in err.message
    assert tr.completion(CompletionRequest(model=MODEL, prompt=[1] * 40, max_tokens=24)).cfg.gen_length == 24


def test_batches_group_by_the_config_key():
    tr = _translator()
    plans = [tr.completion(CompletionRequest(model=MODEL, prompt=[1, 2, 3], max_tokens=m, seed=s))
             for m, s in ((30, 1), (32, 2), (33, 3))]
    assert plans[0].cfg.key() == plans[1].cfg.key() != plans[2].cfg.key()
    assert not hasattr(batcher_module, "batch_key")


# --- serve's model flags reach the loader ------------------------------------------------------

def test_serve_passes_revision_and_allow_pickle_to_the_loader(tmp_path, monkeypatch, capsys):
    """A pickle-only checkpoint is refused without --allow-pickle and served with it; --revision
    reaches load_model."""
    import uvicorn

    import streaming_dllm.loading as loading

    folder = tmp_path / "pickled"
    shutil.copytree(loading.BUILTIN_DIR, folder, ignore=shutil.ignore_patterns("model.safetensors"))
    torch.save(load_file(str(loading.BUILTIN_DIR / "model.safetensors")), folder / "pytorch_model.bin")
    served, calls = [], []
    real_load = loading.load_model

    def recording_load(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(loading, "load_model", recording_load)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append((app, kw)))
    base = ["serve", "--device", "cpu", "--dtype", "float32", "--port", "0", "--threads", "1",
            "--log-level", "warning"]
    with pytest.raises(SystemExit) as e:
        cli_main([*base, "--model", str(folder)])
    assert e.value.code == 2 and "--allow-pickle" in capsys.readouterr().err
    assert cli_main([*base, "--model", str(folder), "--allow-pickle", "--timeout-keep-alive", "7"]) == 0
    assert calls[-1]["allow_pickle"] is True and served[-1][1]["timeout_keep_alive"] == 7
    assert served[-1][0].state.service.settings.model_name == str(folder)
    assert cli_main([*base, "--model", "builtin", "--revision", "v1.2"]) == 0
    assert calls[-1]["revision"] == "v1.2" and calls[-1]["allow_pickle"] is False


# --- a live server: auth scheme, a client vanishing or stalling mid-body ------------------------

class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture()
def server_log():
    handler = _Records()
    loggers = [logging.getLogger(n) for n in ("streaming_dllm.server", "uvicorn.error", "uvicorn")]
    for lg in loggers:
        lg.addHandler(handler)
    yield handler
    for lg in loggers:
        lg.removeHandler(handler)


@pytest.fixture(scope="module")
def server():
    limits = Limits(max_tokens=16, default_max_tokens=8, body_timeout_s=1.0)
    settings = ServerSettings(model_name=MODEL, api_key=KEY, shared_overrides={"block_length": 8},
                              limits=limits)
    with LiveServer(*load_served_model(), settings) as srv:
        yield srv


def _status_count(metrics: str, status: str) -> float:
    line = 'sdllm_requests_total{endpoint="/v1/completions",status="' + status + '"} '
    m = re.search("^" + re.escape(line) + r"(\S+)$", metrics, re.M)
    return float(m.group(1)) if m else 0.0


def _raw(port: int, body: bytes, length: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (f"POST {COMP} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {KEY}\r\nContent-Length: {length}\r\n\r\n").encode()
    s.sendall(head + body)
    return s


def test_basic_auth_is_a_wrong_scheme(server):
    r = httpx.post(server.url + COMP, json={"model": MODEL, "prompt": "hi"},
                   headers={"Authorization": "Basic dXNlcjpwYXNz"})
    err = r.json()["error"]
    assert r.status_code == 401 and err["code"] == "wrong_auth_scheme"
    assert "wrong scheme 'Basic'" in err["message"] and "Bearer <key>" in err["message"]
    r = httpx.post(server.url + COMP, json={"model": MODEL, "prompt": "hi"},
                   headers={"Authorization": "Bearer"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"


def test_client_gone_mid_body_is_not_a_server_error(server, server_log):
    s = _raw(server.port, b'{"model": "builtin", "prompt": "Tom has', 100_000)
    time.sleep(0.2)
    s.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        metrics = httpx.get(server.url + "/metrics", headers=AUTH).text
        if _status_count(metrics, "499"):
            break
        time.sleep(0.1)
    assert _status_count(metrics, "499") == 1, metrics
    assert _status_count(metrics, "500") == 0
    text = "\n".join(server_log.lines)
    assert "Traceback" not in text and "unhandled error" not in text and "Exception in ASGI" not in text, text
    ok = httpx.post(server.url + COMP, json={"model": MODEL, "prompt": "Tom has 3 apples."}, headers=AUTH,
                    timeout=60)
    assert ok.status_code == 200


def test_stalled_body_times_out_with_408(server, server_log):
    s = _raw(server.port, b'{"model": "bui', 100)
    start = time.monotonic()
    reply = b""
    while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
        part = s.recv(65536)
        if not part:
            break
        reply += part
    took = time.monotonic() - start
    s.close()
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert b"body_timeout" in reply and 0.8 < took < 10, (took, reply)
    metrics = httpx.get(server.url + "/metrics", headers=AUTH).text
    assert _status_count(metrics, "408") >= 1 and _status_count(metrics, "500") == 0
    assert "Traceback" not in "\n".join(server_log.lines)


# --- the worker ---------------------------------------------------------------------------------

def test_dead_worker_refuses_work_with_503(monkeypatch):
    """A worker thread that is gone (here: its loop told to end) makes /v1/* and /health 503."""
    monkeypatch.setattr(batcher_module.Batcher, "_take", lambda self: None)
    settings = ServerSettings(model_name=MODEL, limits=Limits(max_tokens=8), batching="same-settings")
    with LiveServer(*load_served_model(), settings) as srv:
        deadline = time.monotonic() + 10
        while srv.app.state.service.worker.alive and time.monotonic() < deadline:
            time.sleep(0.02)
        r = httpx.post(srv.url + COMP, json={"model": MODEL, "prompt": "hi"}, timeout=10)
        assert r.status_code == 503 and r.json()["error"]["code"] == "worker_stopped"
        health = httpx.get(srv.url + "/health")
        assert health.status_code == 503 and health.json()["status"] == "worker stopped"


def test_worker_survives_an_error_while_taking_a_batch(monkeypatch):
    """An exception while taking a batch fails the oldest request (500) and the worker serves on."""
    real = sd.DecodeConfig.key
    state = {"failed": False}

    def flaky(self):
        if not state["failed"]:
            state["failed"] = True
            raise RuntimeError("scheduling bug")
        return real(self)

    monkeypatch.setattr(sd.DecodeConfig, "key", flaky)
    settings = ServerSettings(model_name=MODEL, shared_overrides={"block_length": 8},
                              limits=Limits(max_tokens=8, batch_wait_ms=0), batching="same-settings")
    body = {"model": MODEL, "prompt": "Tom has 3 apples.", "max_tokens": 8, "temperature": 0}
    with LiveServer(*load_served_model(), settings) as srv:
        first = httpx.post(srv.url + COMP, json=body, timeout=60)
        assert first.status_code == 500 and state["failed"]
        assert httpx.post(srv.url + COMP, json=body, timeout=60).status_code == 200
        assert httpx.get(srv.url + "/health").json()["status"] == "ok"

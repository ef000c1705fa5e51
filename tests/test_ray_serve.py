"""``serve --replicas 2`` on a real local Ray instance, driven by the real openai client.

Two engine replicas of the built-in model answer 100 requests from 8 clients exactly as the single
server does, and both take a share (their metrics say so). Killing one replica's process under
load loses nothing silently: every request gets its answer or a retryable 503
(``replica_unavailable``), and Ray brings the replica back.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_helpers import LiveServer, load_served_model
from test_server_continuous import _spec, ask

from streaming_dllm.server.cli import add_serve_parser, settings_from_args

pytest.importorskip("ray.serve", reason="the [cluster] extra (ray[serve]) is not installed")

KEY = "test-key"
FLAGS = ["--model", "builtin", "--block-length", "8", "--max-tokens", "64", "--max-queue", "256",
         "--api-key", KEY, "--max-body-bytes", "100000"]
AUTH = {"Authorization": f"Bearer {KEY}"}
START_S = 300
COMPLETION_ENDPOINTS = {"/v1/completions", "/v1/chat/completions"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _health(url: str) -> dict:
    try:
        return httpx.get(url + "/health", timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return {}


def _log_tail(proc: subprocess.Popen) -> str:
    path = getattr(proc, "log_path", None)
    return path.read_text()[-3000:] if path is not None and path.exists() else ""


def _wait_healthy(url: str, proc: subprocess.Popen, deadline_s: float, avoid_pid: int | None = None) -> dict:
    """Wait until both replicas report healthy (none of them ``avoid_pid``)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "serve --replicas exited: " + _log_tail(proc)
        h = _health(url)
        pids = [r["pid"] for r in h.get("replicas", [])]
        if h.get("replicas_healthy") == 2 and avoid_pid not in pids:
            return h
        time.sleep(1)
    raise AssertionError(f"the replicas did not become healthy in {deadline_s} s: {_health(url)}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    log = tmp_path_factory.mktemp("ray") / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "streaming_dllm", "serve", *FLAGS, "--replicas", "2",
                             "--threads", "1", "--port", str(port), "--log-level", "warning"],
                            env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True)
    proc.log_path = log
    try:
        _wait_healthy(url, proc, START_S)
        yield url, proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def single():
    """The single server, with the same flags, in this process."""
    parser = argparse.ArgumentParser()
    settings = settings_from_args(add_serve_parser(parser.add_subparsers()).parse_args(FLAGS))
    with LiveServer(*load_served_model(), settings) as srv:
        yield srv.url


def _client(url: str, timeout: float = 120) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=timeout)


def _completions_by_replica(url: str) -> dict[str, float]:
    """Completion requests answered 200, per replica, from the gateway's merged /metrics."""
    text = httpx.get(url + "/metrics", headers=AUTH, timeout=10).text
    counts: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if (s.name == "sdllm_requests_total" and s.labels.get("endpoint") in COMPLETION_ENDPOINTS
                    and s.labels.get("status") == "200"):
                counts[s.labels["replica"]] = counts.get(s.labels["replica"], 0) + s.value
    return counts


def test_two_replicas_answer_as_the_single_server_and_share_the_load(cluster, single):
    url, _ = cluster
    rng = random.Random(20)
    specs = [_spec(rng) for _ in range(100)]
    solo = _client(single)
    expected = [ask(solo, spec) for spec in specs]
    before = _completions_by_replica(url)
    clients = [_client(url) for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: ask(clients[i % 8], specs[i]), range(100)))
    assert got == expected
    time.sleep(3)  # replicas report their metrics every second
    after = _completions_by_replica(url)
    served = {r: after[r] - before.get(r, 0) for r in after}
    assert sum(served.values()) == 100
    assert len(served) == 2 and min(served.values()) >= 10, served
    health = _health(url)
    assert health["status"] == "ok" and len(health["replicas"]) == 2


def test_the_single_servers_rules_hold_at_the_gateway(cluster, single):
    """API key, body limit, routes and errors: the same responses as the single server."""
    url, _ = cluster
    body = {"model": "builtin", "prompt": "1+1=", "max_tokens": 8}
    cases = [("POST", "/v1/completions", {}, body),
             ("POST", "/v1/completions", {"Authorization": "Bearer wrong"}, body),
             ("GET", "/metrics", {}, None),
             ("POST", "/v1/completions", AUTH, {**body, "prompt": "x" * 200_000}),
             ("POST", "/v1/completions", AUTH, {**body, "max_tokens": 10_000}),
             ("GET", "/v1/models", AUTH, None),
             ("GET", "/v1/nowhere", AUTH, None)]
    for method, path, headers, payload in cases:
        got = [httpx.request(method, base + path, headers=headers, json=payload, timeout=60)
               for base in (url, single)]
        assert got[0].status_code == got[1].status_code, (path, got[0].text, got[1].text)
        if path != "/v1/models":
            assert got[0].json() == got[1].json()
    assert [r.status_code for r in got] == [404, 404]


def _outcome(client: openai.OpenAI, spec: dict):
    try:
        return ask(client, spec)
    except openai.APIStatusError as exc:  # a retryable status, or a test failure below
        return ("status", exc.status_code, (exc.body or {}).get("code"))
    except openai.APIError as exc:  # an error event in a stream that had begun
        return ("stream-error", None, exc.code)


def test_killing_a_replica_loses_no_request_silently(cluster, single):
    url, proc = cluster
    rng = random.Random(21)
    specs = [{**_spec(rng), "max_tokens": 64, "extra": {"method": "vanilla", "block_length": 8}}
             for _ in range(32)]
    solo = _client(single)
    expected = [ask(solo, spec) for spec in specs]
    clients = [_client(url, timeout=180) for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(_outcome, clients[i % 8], spec) for i, spec in enumerate(specs)]
        deadline = time.monotonic() + 60
        while not (busy := [r for r in _health(url).get("replicas", []) if r["running"]]):
            assert time.monotonic() < deadline, "no replica ever had a request running"
            time.sleep(0.1)
        victim = busy[0]["pid"]
        os.kill(victim, signal.SIGKILL)
        outcomes = [f.result(timeout=240) for f in futures]
    failed = [o for o in outcomes if isinstance(o, tuple)]
    for outcome, want in zip(outcomes, expected, strict=True):
        if not isinstance(outcome, tuple):
            assert outcome == want
    assert all(o in {("status", 503, "replica_unavailable"), ("stream-error", None, "replica_unavailable")}
               for o in failed), failed
    assert len(failed) < len(specs)
    health = _wait_healthy(url, proc, 120, avoid_pid=victim)
    assert health["status"] == "ok"
    again = [{**_spec(rng), "stream": False} for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: ask(clients[i], again[i]), range(8)))
    assert got == [ask(solo, spec) for spec in again]


@pytest.mark.parametrize("extra, message", [
    (["--replicas", "0"], "--replicas: must be in [1, 256], got 0"),
    (["--replicas", "2", "--port", "0"], "--port: give a port with --replicas"),
    (["--replicas", "2", "--model", "/nonexistent/x"], "--model: /nonexistent/x: no such folder"),
    (["--replicas", "2", "--tensor-parallel", "2"], "--tensor-parallel: not with --replicas"),
])
def test_replica_flags_are_checked_before_ray_starts(extra, message):
    out = subprocess.run([sys.executable, "-m", "streaming_dllm", "serve", *FLAGS, *extra],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr

"""``serve --replicas 1 --ray-address HOST:PORT`` joins a Ray cluster started by ``ray start``
(a real head node on loopback), serves there, and leaves the cluster running when it stops."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest
from test_ray_serve import _free_port, _health
from test_server_continuous import PROMPTS

pytest.importorskip("ray.serve", reason="the [cluster] extra (ray[serve]) is not installed")
RAY = shutil.which("ray") or pytest.skip("the ray command is not on PATH", allow_module_level=True)


def _stop(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 60) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_for_head(head: subprocess.Popen, gcs: int, env: dict, timeout: float = 180) -> None:
    """Until ``ray status`` answers: the head is up and has written its auth token (on a loaded
    machine that takes longer than any fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        assert head.poll() is None, "ray start --head exited"
        status = subprocess.run([RAY, "status", "--address", f"127.0.0.1:{gcs}"], env=env,
                                capture_output=True, text=True, timeout=60)
        if status.returncode == 0:
            return
        assert time.monotonic() < deadline, f"the Ray head did not come up: {status.stderr[-2000:]}"
        time.sleep(1)


def test_serve_joins_an_existing_cluster(tmp_path):
    gcs, port = _free_port(), _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}  # the cluster's token, given to both sides
    head = subprocess.Popen([RAY, "start", "--head", "--block", "--port", str(gcs), "--num-cpus", "2",
                             "--include-dashboard", "false", "--disable-usage-stats"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    serve, log = None, tmp_path / "serve.log"
    try:
        _wait_for_head(head, gcs, env)
        serve = subprocess.Popen([sys.executable, "-m", "streaming_dllm", "serve", "--model", "builtin",
                                  "--replicas", "1", "--threads", "1", "--port", str(port),
                                  "--ray-address", f"127.0.0.1:{gcs}", "--log-level", "warning"],
                                 env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"),
                                 start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        while _health(url).get("status") != "ok":
            assert serve.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the joined deployment did not become healthy"
            time.sleep(1)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        reply = client.completions.create(model="builtin", prompt=PROMPTS[2], max_tokens=16,
                                          extra_body={"block_length": 8})
        assert reply.choices[0].text.strip()
        _stop(serve)
        assert serve.returncode == 0
        status = subprocess.run([RAY, "status", "--address", f"127.0.0.1:{gcs}"], env=env,
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr  # the cluster outlives the command that joined it
        with pytest.raises(httpx.HTTPError):  # and the command took its deployment and proxy away
            httpx.get(url + "/health", timeout=5)
    finally:
        if serve is not None:
            _stop(serve, signal.SIGKILL)
        _stop(head, signal.SIGTERM)

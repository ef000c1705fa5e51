"""``streaming-dllm serve``: flags to settings, refusals at start-up, and a real start on loopback."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from server_helpers import served_checkpoint

from streaming_dllm.server.cli import add_serve_parser, serve_entry, settings_from_args


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_flags_become_settings():
    args = parse("--max-n", "2", "--window", "16", "--block-length", "8", "--api-key", "k",
                 "--max-queue", "3")
    assert args.func is serve_entry
    assert args.host == "127.0.0.1"
    s = settings_from_args(args)
    assert (s.limits.max_n, s.limits.max_queue, s.api_key) == (2, 3, "k")
    assert s.base_config().window == 16 and s.base_config().block_length == 8
    other = s.base_config("fast-dllm")
    assert other.window is None and other.block_length == 8  # --window belongs to the default method
    assert settings_from_args(parse("--block-length", "48")).base_config().block_length == 48
    assert settings_from_args(parse("--max-tokens", "64")).limits.default_max_tokens == 64


@pytest.mark.parametrize("argv, field", [
    (["--block-length", "0"], "block_length"),
    (["--threshold", "1.5"], "threshold"),
    (["--methods", "vanilla"], "method"),
    (["--methods", "vanilla,turbo"], "methods"),
    (["--max-batch-size", "0"], "max_batch_size"),
    (["--default-max-tokens", "4096"], "default_max_tokens"),
])
def test_bad_flags_are_refused_at_start(argv, field):
    with pytest.raises(ValueError, match=field):
        settings_from_args(parse(*argv))


def test_server_process_binds_loopback_and_serves():
    model = served_checkpoint()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "streaming_dllm.server", "--model", model, "--served-model-name", "demo",
           "--port", str(port), "--threads", "1", "--log-level", "warning", "--max-tokens", "16",
           "--default-max-tokens", "16", "--block-length", "16"]
    proc = subprocess.Popen(cmd, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, "server exited"
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        listening = [c for c in _listeners(proc.pid) if c[1] == port]
        assert listening and all(addr == "127.0.0.1" for addr, _ in listening)
        data = json.dumps({"model": "demo", "prompt": "Tom has 3 apples."}).encode()
        req = urllib.request.Request(url + "/v1/completions", method="POST", data=data,
                                     headers={"Content-Type": "application/json"})
        body = json.loads(urllib.request.urlopen(req, timeout=60).read())
        assert body["model"] == "demo" and body["usage"]["completion_tokens"] <= 16
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _listeners(pid: int) -> list[tuple[str, int]]:
    """(address, port) of the listening TCP sockets of a process (Linux /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:  # the server closed this descriptor after listdir read it
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = []
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        parts = line.split()
        if parts[3] == "0A" and parts[9] in inodes:  # 0A = LISTEN
            hex_ip, hex_port = parts[1].split(":")
            ip = ".".join(str(int(hex_ip[i:i + 2], 16)) for i in (6, 4, 2, 0))
            out.append((ip, int(hex_port, 16)))
    return out

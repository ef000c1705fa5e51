"""Hostile ``serve`` flags: every flag out of its range is refused with rc 2 and one line naming
the flag, before any model is loaded; a missing ``[server]`` extra names the extra to install."""

from __future__ import annotations

import sys

import pytest
from hostile import CLI, Case, check, run

SERVE = [*CLI, "serve"]
SERVER = [sys.executable, "-m", "streaming_dllm.server"]

CASES = [
    Case("batch wait inf", [*SERVE, "--batch-wait-ms", "inf"], "--batch-wait-ms"),
    Case("batch wait nan", [*SERVE, "--batch-wait-ms", "nan"], "--batch-wait-ms"),
    Case("batch wait 1e12", [*SERVE, "--batch-wait-ms", "1e12"], "--batch-wait-ms"),
    Case("batch wait negative", [*SERVE, "--batch-wait-ms", "-1"], "--batch-wait-ms"),
    Case("port too high", [*SERVE, "--port", "99999"], "--port"),
    Case("port negative", [*SERVE, "--port", "-1"], "--port"),
    Case("queue negative", [*SERVE, "--max-queue", "-1"], "--max-queue"),
    Case("queue huge", [*SERVE, "--max-queue", "100000000"], "--max-queue"),
    Case("batch size zero", [*SERVE, "--max-batch-size", "0"], "--max-batch-size"),
    Case("batch size huge", [*SERVE, "--max-batch-size", "100000"], "--max-batch-size"),
    Case("max tokens huge", [*SERVE, "--max-tokens", "1000000"], "--max-tokens"),
    Case("max tokens not an int", [*SERVE, "--max-tokens", "inf"], "--max-tokens"),
    Case("default max tokens above max", [*SERVE, "--default-max-tokens", "2048"], "--default-max-tokens"),
    Case("prompt tokens huge", [*SERVE, "--max-prompt-tokens", "10000000"], "--max-prompt-tokens"),
    Case("prompt tokens zero", [*SERVE, "--max-prompt-tokens", "0"], "--max-prompt-tokens"),
    Case("body bytes huge", [*SERVE, "--max-body-bytes", str(1 << 40)], "--max-body-bytes"),
    Case("body bytes zero", [*SERVE, "--max-body-bytes", "0"], "--max-body-bytes"),
    Case("max n zero", [*SERVE, "--max-n", "0"], "--max-n"),
    Case("max prompts huge", [*SERVE, "--max-prompts", "1000000"], "--max-prompts"),
    Case("body timeout zero", [*SERVE, "--body-timeout-s", "0"], "--body-timeout-s"),
    Case("body timeout inf", [*SERVE, "--body-timeout-s", "inf"], "--body-timeout-s"),
    Case("keep-alive zero", [*SERVE, "--timeout-keep-alive", "0"], "--timeout-keep-alive"),
    Case("max block length zero", [*SERVE, "--max-block-length", "0"], "--max-block-length"),
    Case("max window negative", [*SERVE, "--max-window", "-1"], "--max-window"),
    Case("max temperature inf", [*SERVE, "--max-temperature", "inf"], "--max-temperature"),
    Case("threads zero", [*SERVE, "--threads", "0"], "--threads"),
    Case("threads huge", [*SERVE, "--threads", "100000"], "--threads"),
    Case("block length zero", [*SERVE, "--block-length", "0"], "--block-length"),
    Case("threshold above 1", [*SERVE, "--threshold", "1.5"], "--threshold"),
    Case("alpha nan", [*SERVE, "--alpha", "nan"], "--alpha"),
    Case("window negative", [*SERVE, "--window", "-5"], "--window"),
    Case("unknown allowed method", [*SERVE, "--methods", "vanilla,turbo"], "--methods"),
    Case("default method not allowed", [*SERVE, "--methods", "vanilla"], "--methods"),
    Case("empty served model name", [*SERVE, "--served-model-name", ""], "--served-model-name"),
    Case("stand-alone server, port", [*SERVER, "--port", "70000"], "--port"),
    Case("stand-alone server, batch wait", [*SERVER, "--batch-wait-ms", "inf"], "--batch-wait-ms"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_serve_flag(case):
    check(case)


# A process without fastapi and uvicorn: a meta path finder refuses them, as if not installed.
_BLOCK = """
import sys
class _NoServerExtra:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('fastapi', 'uvicorn'):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _NoServerExtra())
from streaming_dllm.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_serve_without_the_server_extra_names_it():
    check(Case("no [server] extra", [sys.executable, "-c", _BLOCK, "serve", "--port", "0"],
               "streaming-dllm[server]"))


def test_help_lists_serve_without_the_server_extra():
    res = run([sys.executable, "-c", _BLOCK, "--help"])
    assert res.rc == 0 and "Traceback" not in res.stderr, res.stderr
    assert "serve" in res.stdout
    res = run([sys.executable, "-c", _BLOCK, "serve", "--help"])
    assert res.rc == 0 and "--allow-pickle" in res.stdout and "--batch-wait-ms" in res.stdout

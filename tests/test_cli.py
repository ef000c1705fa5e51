"""The command line, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from streaming_dllm.loading import BUILTIN_DIR

CLI = [sys.executable, "-m", "streaming_dllm.cli"]


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_help_documents_every_knob():
    out = _run("generate", "--help").stdout
    for flag in (
        "--method",
        "--gen-length",
        "--block-length",
        "--steps",
        "--unmask",
        "--threshold",
        "--alpha",
        "--factor",
        "--cache",
        "--window",
        "--tail-keep",
        "--early-exit",
        "--remasking",
        "--temperature",
        "--mask-id",
        "--eos-id",
        "--seed",
        "--model",
        "--device",
        "--dtype",
    ):
        assert flag in out


@pytest.mark.parametrize(
    "args,message",
    [
        (["--gen-length", "100", "--block-length", "32"], "DecodeConfig.gen_length=100"),
        (["--threshold", "2"], "DecodeConfig.threshold=2.0"),
        (["--window", "wide"], "--window must be an integer or 'none'"),
        (["--method", "fastest"], "invalid choice: 'fastest'"),
        (["--model", "/no/such/folder"], "no such folder"),
    ],
)
def test_bad_flags_fail_cleanly(args, message):
    res = _run("generate", "--prompt", "hi", "--device", "cpu", *args)
    assert res.returncode == 2
    assert message in res.stderr
    assert "Traceback" not in res.stderr


def test_empty_prompt_on_stdin_is_a_clear_error():
    res = subprocess.run([*CLI, "generate", "--device", "cpu"], input="  \n", capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2
    assert "the prompt is empty" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.skipif(not (BUILTIN_DIR / "model.safetensors").is_file(), reason="built-in weights not built")
def test_generate_with_builtin_prints_answer_and_summary():
    res = _run(
        "generate",
        "--prompt",
        "Mia has 12 apples. Mia buys 7 apples. Mia gives 5 apples to Tom. How many apples does Mia have now?",
        "--device",
        "cpu",
        "--method",
        "streaming",
        "--gen-length",
        "128",
    )
    assert res.returncode == 0, res.stderr
    assert "The answer is" in res.stdout
    assert "nfe" in res.stderr and "tokens/s" in res.stderr

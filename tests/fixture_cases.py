"""Replay of the reference fixtures: the DecodeConfig of each fixture method (the fixtures README's
"Mapping to DecodeConfig") and where the fixtures live."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from streaming_dllm import DecodeConfig

FIXTURES = Path(
    os.environ.get(
        "STREAMING_DLLM_FIXTURES", Path(__file__).resolve().parents[2] / "shared/fixtures/reference"
    )
)

# The methods of each fixture set, each run at every gen_length in GEN_LENGTHS (a group of 12 cases).
# Listed here so tests can be collected without the fixtures; test_fixture_parity checks the
# fixtures hold exactly these groups.
GEN_LENGTHS = (64, 128)
METHODS: dict[str, tuple[str, ...]] = {
    "llada": (
        "dual-cache", "dual-cache-factor", "fast-dllm-dual", "fast-dllm-prefix", "parallel-factor",
        "parallel-threshold", "prefix-cache", "streaming-factor-w16", "streaming-fullwindow-a0.0",
        "streaming-steps-w16", "streaming-w16-a0.0", "streaming-w16-a0.3", "streaming-w32-a0.0",
        "streaming-w32-a0.3", "vanilla",
    ),
    "dream": (
        "fast-dllm-dual", "fast-dllm-prefix", "parallel-threshold", "prefix-cache-entropy",
        "streaming-dual-w16-a0.3", "streaming-entropy-w16", "streaming-fullwindow-a0.0",
        "streaming-w16-a0.0", "streaming-w16-a0.3", "streaming-w32-a0.0", "streaming-w32-a0.3",
        "vanilla-entropy", "vanilla-maskgit_plus",
    ),
}
GROUP_NAMES: dict[str, list[str]] = {
    arch: sorted(f"{m}-g{g}" for m in methods for g in GEN_LENGTHS) for arch, methods in METHODS.items()
}

# Methods whose reference runs one useless forward after a block that its block-start forward
# completed (fixtures README, quirk 6); our engine skips it.
USELESS_FORWARD_METHODS = {"prefix-cache", "fast-dllm-prefix", "dual-cache", "fast-dllm-dual"}


def fixtures_present() -> bool:
    return all((FIXTURES / f"{arch}-tiny" / "config.json").is_file() for arch in METHODS)


def need_fixtures() -> None:
    """Fail the running test, naming where the fixtures were looked for and how to point elsewhere."""
    if not fixtures_present():
        pytest.fail(
            f"reference fixtures not found at {FIXTURES} (set STREAMING_DLLM_FIXTURES)", pytrace=False
        )


def load_cases(arch: str) -> list[dict[str, Any]]:
    path = FIXTURES / f"{arch}-tiny" / "cases.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def config_for(case: dict[str, Any]) -> DecodeConfig | None:
    """The DecodeConfig that reproduces a fixture case, None for cases we do not replay."""
    kw = case["kwargs"]
    g, b = case["gen_length"], case["block_length"]
    method, arch = case["method"], case["arch"]
    tau = kw.get("threshold") or 0.9
    base: dict[str, Any] = dict(gen_length=g, block_length=b, temperature=0.0)
    streaming = dict(
        cache="prefix",
        unmask="dynamic",
        threshold=tau,
        alpha=kw.get("confidence_alpha") or 0.0,
        early_exit=True,
    )
    if method.startswith("streaming-w"):
        return DecodeConfig(**base, **streaming, window=kw["window_size"])
    if method == "streaming-fullwindow-a0.0":
        return DecodeConfig(**base, **streaming, window=None)
    if method.startswith("streaming-dual-w"):
        return DecodeConfig(**base, **{**streaming, "cache": "dual"}, window=kw["window_size"])
    if method.startswith("streaming-steps-w"):
        return DecodeConfig(
            **base, cache="prefix", window=kw["window_size"], unmask="steps", steps=g, early_exit=True
        )
    if method.startswith("streaming-factor-w"):
        return DecodeConfig(
            **base,
            cache="prefix",
            window=kw["window_size"],
            unmask="factor",
            factor=kw["factor"],
            early_exit=True,
        )
    if method.startswith("streaming-entropy-w"):
        return DecodeConfig(
            **base,
            cache="prefix",
            window=kw["window_size"],
            unmask="steps",
            steps=g,
            remasking="entropy",
            early_exit=True,
        )
    table: dict[str, dict[str, Any]] = {
        "vanilla": dict(unmask="steps", steps=g),
        "parallel-threshold": dict(unmask="threshold", threshold=tau),
        "prefix-cache": dict(cache="prefix", unmask="steps", steps=g),
        "fast-dllm-prefix": dict(cache="prefix", unmask="threshold", threshold=tau),
        "dual-cache": dict(cache="dual", unmask="steps", steps=g),
        "fast-dllm-dual": dict(cache="dual", unmask="threshold", threshold=tau),
        "parallel-factor": dict(unmask="factor", factor=kw.get("factor") or 1.0),
        "dual-cache-factor": dict(cache="dual", unmask="factor", factor=kw.get("factor") or 1.0),
        "vanilla-entropy": dict(block_length=g, unmask="steps", steps=g, remasking="entropy"),
        "vanilla-maskgit_plus": dict(block_length=g, unmask="steps", steps=g, remasking="low_confidence"),
        "prefix-cache-entropy": dict(cache="prefix", unmask="steps", steps=g, remasking="entropy"),
    }
    if arch == "dream" and method == "parallel-threshold":
        return None  # Fast-dLLM's no-block Dream quota rule: not required (fixtures README)
    return DecodeConfig(**{**base, **table[method]})

"""Replay of the reference fixtures: the DecodeConfig of each fixture method (the fixtures README's
"Mapping to DecodeConfig") and where the fixtures live."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from streaming_dllm import ConfigError, DecodeConfig

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


# The official function of each fixture case (its "reference" record), by the name
# ``DecodeConfig.from_reference`` knows it under.
REFERENCE_NAMES: dict[tuple[str, str, str], str] = {
    ("NVlabs/Fast-dLLM", "llada/generate.py", "generate"): "fast_dllm.llada.generate",
    ("NVlabs/Fast-dLLM", "llada/generate.py", "generate_with_prefix_cache"):
        "fast_dllm.llada.generate_with_prefix_cache",
    ("NVlabs/Fast-dLLM", "llada/generate.py", "generate_with_dual_cache"):
        "fast_dllm.llada.generate_with_dual_cache",
    ("xiaoshideta/Streaming-dLLM", "LLaDA-1.5/generate.py", "generate"): "streaming_dllm.llada.generate",
    ("xiaoshideta/Streaming-dLLM", "LLaDA-1.5/generate.py", "generate_with_dual_cache"):
        "streaming_dllm.llada.generate_with_dual_cache",
    ("xiaoshideta/Streaming-dLLM", "LLaDA-1.5/generate.py", "generate_with_prefix_cache"):
        "streaming_dllm.llada.generate_with_prefix_cache",
    ("NVlabs/Fast-dLLM", "dream/model/generation_utils.py", "generation_utils"): "dream.diffusion_generate",
    ("NVlabs/Fast-dLLM", "dream/model/generation_utils_block.py", "generation_utils_block"):
        "fast_dllm.dream.diffusion_generate",
    ("xiaoshideta/Streaming-dLLM", "Dream/model/generation_utils_block.py", "generation_utils_block"):
        "streaming_dllm.dream.diffusion_generate",
}


def reference_name(case: dict[str, Any]) -> str:
    r = case["reference"]
    return REFERENCE_NAMES[(r["repo"], r["file"], r["function"])]


def config_for(case: dict[str, Any]) -> DecodeConfig | None:
    """The DecodeConfig that reproduces a fixture case: ``from_reference`` given the official
    call's own keyword arguments; None for the one call it refuses (Dream's no-block
    ``confidence_threshold``, not required by the fixtures README)."""
    try:
        return DecodeConfig.from_reference(reference_name(case), **case["kwargs"])
    except ConfigError as exc:
        assert exc.field == "alg" and case["arch"] == "dream" and case["method"] == "parallel-threshold", exc
        return None

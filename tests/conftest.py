from __future__ import annotations

import pytest
import torch
from fixture_cases import FIXTURES

import streaming_dllm as sd

# Tiny models gain nothing from intra-op threads, and spinning threads thrash a shared 2-core box.
torch.set_num_threads(1)


def _need_fixtures() -> None:
    if not (FIXTURES / "llada-tiny" / "config.json").is_file():
        pytest.fail(f"reference fixtures not found at {FIXTURES} (set STREAMING_DLLM_FIXTURES)")


@pytest.fixture(scope="session")
def llada_tiny():
    _need_fixtures()
    return sd.load_model(FIXTURES / "llada-tiny")


@pytest.fixture(scope="session")
def dream_tiny():
    _need_fixtures()
    return sd.load_model(FIXTURES / "dream-tiny")


@pytest.fixture(scope="session")
def tiny_models(llada_tiny, dream_tiny):
    return {"llada": llada_tiny, "dream": dream_tiny}

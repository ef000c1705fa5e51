from __future__ import annotations

import pytest
import torch
from fixture_cases import FIXTURES, fixtures_present, need_fixtures

import streaming_dllm as sd

# Tiny models gain nothing from intra-op threads, and spinning threads thrash a shared 2-core box.
torch.set_num_threads(1)

_MODEL_FIXTURES = {"llada_tiny", "dream_tiny", "tiny_models"}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    """A test on the tiny reference models fails (one failure each, not a setup error) when the
    fixtures are missing, with the path to set."""
    if _MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
        need_fixtures()


def _load(name: str):
    return sd.load_model(FIXTURES / name) if fixtures_present() else None  # None: the test fails at call


@pytest.fixture(scope="session")
def llada_tiny():
    return _load("llada-tiny")


@pytest.fixture(scope="session")
def dream_tiny():
    return _load("dream-tiny")


@pytest.fixture(scope="session")
def tiny_models(llada_tiny, dream_tiny):
    return {"llada": llada_tiny, "dream": dream_tiny}

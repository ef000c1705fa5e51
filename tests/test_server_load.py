"""Bounded load test: 200 requests from 16 concurrent openai clients against the real server.

No errors, no lost or mixed-up responses, and every batched answer equals the answer the same
request got when it was decoded alone (same-settings batching, whose batches /metrics counts;
test_server_continuous.py loads the continuous engine). Figures (p50/p99, req/s) come from
benchmarks/serve_load.py.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import sys
from pathlib import Path

import httpx
import pytest
from server_helpers import LiveServer, load_served_model

from streaming_dllm.server import Limits, ServerSettings

MODEL = "builtin"
_spec = importlib.util.spec_from_file_location(
    "serve_load", Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py")
serve_load = importlib.util.module_from_spec(_spec)
sys.modules["serve_load"] = serve_load
_spec.loader.exec_module(serve_load)


@pytest.fixture(scope="module")
def server():
    limits = Limits(max_batch_size=16, max_queue=256, batch_wait_ms=5)
    settings = ServerSettings(model_name=MODEL, shared_overrides={"block_length": 8}, limits=limits,
                              batching="same-settings")
    with LiveServer(*load_served_model(), settings) as srv:
        yield srv


def batch_counts(url: str) -> tuple[float, float]:
    """(engine batches, rows decoded) so far, from /metrics."""
    metrics = httpx.get(url + "/metrics").text
    count = float(re.search(r"^sdllm_batch_rows_count (\S+)$", metrics, re.M).group(1))
    total = float(re.search(r"^sdllm_batch_rows_sum (\S+)$", metrics, re.M).group(1))
    return count, total


def test_200_requests_16_clients_match_solo_answers(server):
    items = serve_load.make_workload(distinct=40, max_tokens=8, multi_choice=True)
    solo, _ = asyncio.run(serve_load.run_load(server.url, MODEL, items, concurrency=1))
    reference = {r.key: r for r in solo}
    assert len(reference) == len(items)
    solo_batches, solo_rows = batch_counts(server.url)
    assert (solo_batches, solo_rows) == (len(items), sum(i.n for i in items))  # one request per batch

    workload = serve_load.expand(items, 200)
    results, wall = asyncio.run(serve_load.run_load(server.url, MODEL, workload, concurrency=16))
    assert len(results) == 200
    assert sorted(r.key for r in results) == sorted(i.key for i in workload)
    assert serve_load.mismatches(results, reference) == []

    batches, rows = batch_counts(server.url)
    batches, rows = batches - solo_batches, rows - solo_rows
    assert rows == sum(i.n for i in workload)  # every row decoded once: none lost, none decoded twice
    assert rows / batches >= 4  # 16 clients: requests really were decoded together
    metrics = httpx.get(server.url + "/metrics").text
    ok = re.findall(r'^sdllm_requests_total\{endpoint="/v1/(?:chat/)?completions",status="200"\} (\S+)$',
                    metrics, re.M)
    assert sum(float(v) for v in ok) == 240
    assert not re.search(r'status="(4|5)\d\d"', metrics)
    print(f"\n200 requests / 16 clients: {len(results) / wall:.1f} req/s, "
          f"p50 {serve_load.percentile([r.latency for r in results], 50):.3f} s, "
          f"p99 {serve_load.percentile([r.latency for r in results], 99):.3f} s, "
          f"{rows / batches:.1f} rows per batch")

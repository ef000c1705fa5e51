"""Prometheus metrics of one app (own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Requests by endpoint and status, tokens, forward passes, queue depth and latencies."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("sdllm_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("sdllm_request_latency_seconds", "Request latency (until the last byte)",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.first_chunk = Histogram("sdllm_time_to_first_block_seconds",
                                     "Time from arrival to the first finished block", buckets=LATENCY_BUCKETS,
                                     registry=r)
        self.queue_wait = Histogram("sdllm_queue_wait_seconds",
                                    "Time from arrival until a request starts decoding",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram("sdllm_batch_rows", "Rows per engine batch (same-settings batching)",
                                    buckets=ROW_BUCKETS, registry=r)
        self.rows_per_forward = Histogram("sdllm_rows_per_forward",
                                          "Rows fed to each batched model forward (continuous / serial "
                                          "batching; the mean of a step's forwards)",
                                          buckets=ROW_BUCKETS, registry=r)
        self.rows_forwarded = Counter("sdllm_rows_forwarded", "Rows fed to model forwards, summed over "
                                      "forwards (continuous / serial batching)", registry=r)
        self.rows_in_flight = Gauge("sdllm_rows_in_flight", "Rows of the requests being decoded", registry=r)
        self.kv_tokens_in_flight = Gauge("sdllm_kv_tokens_in_flight", "K/V positions held by the requests "
                                         "being decoded (continuous / serial batching)", registry=r)
        self.prompt_tokens = Counter("sdllm_prompt_tokens", "Prompt tokens of served requests", registry=r)
        self.generated_tokens = Counter("sdllm_generated_tokens", "Completion tokens returned", registry=r)
        self.forward_passes = Counter("sdllm_forward_passes", "Model forward passes (nfe)", registry=r)
        self.queue_depth = Gauge("sdllm_queue_depth", "Requests waiting for a batch", registry=r)
        self.running = Gauge("sdllm_running_requests", "Requests being decoded", registry=r)
        self.rejected = Counter("sdllm_queue_full_rejections", "Requests refused because the queue was full",
                                registry=r)
        self.released_rows = Counter("sdllm_rows_released_early",
                                     "Rows whose decoding stopped early because their request no longer "
                                     "needed them (client left, or stop string reached)", registry=r)
        self.disconnects = Counter("sdllm_client_disconnects", "Requests whose client left before the end",
                                   registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""What every replica reports, in one place: its health, its pid and its Prometheus metrics.

Each replica posts a report every ``REPORT_PERIOD_S`` (from Ray Serve's health check); the gateway
reads them for ``/health`` (every replica) and ``/metrics`` (every replica's series, labelled
``replica``). A report older than ``STALE_AFTER_S`` is a replica that is gone.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

REPORT_PERIOD_S = 1.0
STALE_AFTER_S = 4.0


class ReplicaBoard:
    """A small Ray actor (``ray.remote(ReplicaBoard)``): the latest report of every replica."""

    def __init__(self) -> None:
        self._reports: dict[str, dict[str, Any]] = {}

    def post(self, replica: str, report: dict[str, Any]) -> None:
        self._reports[replica] = {**report, "replica": replica, "reported_at": time.time()}

    def live(self) -> list[dict[str, Any]]:
        """Reports newer than ``STALE_AFTER_S``, by replica id; older ones are dropped."""
        now = time.time()
        self._reports = {k: r for k, r in self._reports.items() if now - r["reported_at"] <= STALE_AFTER_S}
        return [self._reports[k] for k in sorted(self._reports)]


class _Merged:
    """A collector yielding every replica's metric families, each sample labelled with its replica."""

    def __init__(self, reports: list[dict[str, Any]], extra: list[Metric]) -> None:
        self.reports, self.extra = reports, extra

    def collect(self):
        families: dict[str, Metric] = {}
        for report in self.reports:
            for fam in text_string_to_metric_families(report.get("metrics", "")):
                merged = families.setdefault(fam.name, Metric(fam.name, fam.documentation, fam.type))
                labels = {"replica": report["replica"]}
                for s in fam.samples:
                    merged.add_sample(s.name, {**s.labels, **labels}, s.value, s.timestamp)
        yield from families.values()
        yield from self.extra


def merge_metrics(reports: list[dict[str, Any]], extra: list[Metric]) -> bytes:
    """One Prometheus exposition of all replicas' metrics (a ``replica`` label tells them apart)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(reports, extra))
    return generate_latest(registry)

"""Prometheus metrics, built from Redis on every scrape (prometheus_client).

Workers count each ended job into Redis (:func:`record_job`: counters and histogram
buckets, one HINCRBY each), so any process that reaches Redis serves the same view:
``domsnap metrics`` (print once, or ``--port`` to serve) and ``domsnap scheduler
--metrics-port``. Snapshot counts, sizes and last-success times come from the
snapshot records themselves, host liveness from the heartbeat keys.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from domsnap.policies import PolicyStore, policy_period_s
from domsnap.store import Store
from domsnap.storebase import _translated

DURATION_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
PAUSE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
HISTOGRAMS = {"job_duration_seconds": DURATION_BUCKETS, "pause_seconds": PAUSE_BUCKETS}


@_translated
def record_job(store: Store, op: str, state: str, duration_s: float | None,
               pause_ms: float | None) -> None:
    """Count one ended job (called by the worker at the job's end)."""
    with store.r.pipeline(transaction=False) as pipe:
        pipe.hincrby(store.keys.metrics_jobs, f"{op}:{state}", 1)
        for name, value in (("job_duration_seconds", duration_s),
                            ("pause_seconds", None if pause_ms is None else pause_ms / 1000)):
            if value is None or value < 0:
                continue
            key = store.keys.metrics_hist(name)
            for bound in HISTOGRAMS[name]:
                if value <= bound:
                    pipe.hincrby(key, f"le:{bound:g}", 1)
            pipe.hincrby(key, "count", 1)
            pipe.hincrbyfloat(key, "sum", value)
        pipe.execute()


class DomsnapCollector(Collector):
    def __init__(self, store: Store, *, clock: Any = time.time) -> None:
        self.store = store
        self.pstore = PolicyStore(store)
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        yield from self._jobs()
        yield from self._snapshots()
        yield from self._policies()
        yield from self._hosts()

    def _jobs(self) -> Iterator[Metric]:
        jobs = CounterMetricFamily("domsnap_jobs", "Ended jobs by operation and outcome",
                                   labels=["op", "outcome"])
        for field, count in sorted(self.store.r.hgetall(self.store.keys.metrics_jobs).items()):
            op, _, outcome = str(field).partition(":")
            jobs.add_metric([op, outcome], float(count))
        yield jobs
        docs = {"job_duration_seconds": "Job duration from start to end",
                "pause_seconds": "How long a create kept the domain paused"}
        for name, bounds in HISTOGRAMS.items():
            raw = self.store.r.hgetall(self.store.keys.metrics_hist(name))
            count = float(raw.get("count", 0))
            buckets = [(f"{b:g}", float(raw.get(f"le:{b:g}", 0))) for b in bounds]
            buckets.append(("+Inf", count))
            hist = HistogramMetricFamily(f"domsnap_{name}", docs[name])
            hist.add_metric([], buckets, sum_value=float(raw.get("sum", 0.0)))
            yield hist

    def _snapshots(self) -> Iterator[Metric]:
        labels = ["domain", "domain_name", "host"]
        last = GaugeMetricFamily("domsnap_last_snapshot_timestamp_seconds",
                                 "Creation time of the domain's newest ready snapshot",
                                 labels=labels)
        count = GaugeMetricFamily("domsnap_snapshots", "Ready snapshots of the domain",
                                  labels=labels)
        size = GaugeMetricFamily("domsnap_snapshot_bytes", "Bytes of the domain's snapshot "
                                 "files (memory images and external overlays, as recorded)",
                                 labels=labels)
        per_policy = GaugeMetricFamily(
            "domsnap_policy_domain_last_success_timestamp_seconds",
            "Creation time of the newest snapshot a policy made of the domain",
            labels=["policy", "domain", "domain_name"])
        for host in self.store.hosts():
            inv = self.store.inventory(host)
            for dom in inv.domains if inv else []:
                if self.store.r.hget(self.store.keys.index_uuid, dom.uuid) not in (None, host):
                    continue
                # the summaries carry what these need (size, policy, time): a scrape
                # does not parse every full record of the fleet
                recs = self.store.snapshot_page(dom.uuid).snapshots
                lv = [dom.uuid, dom.name, host]
                count.add_metric(lv, len(recs))
                size.add_metric(lv, float(sum(r.size_bytes or 0 for r in recs)))
                if recs:
                    last.add_metric(lv, max(r.created_at for r in recs))
                newest: dict[str, float] = {}
                for r in recs:
                    if r.policy:
                        newest[r.policy] = max(newest.get(r.policy, 0.0), r.created_at)
                for pol, ts in sorted(newest.items()):
                    per_policy.add_metric([pol, dom.uuid, dom.name], ts)
        yield from (last, count, size, per_policy)

    def _policies(self) -> Iterator[Metric]:
        period = GaugeMetricFamily("domsnap_policy_period_seconds",
                                   "Time between two runs of the policy", labels=["policy"])
        paused = GaugeMetricFamily("domsnap_policy_paused", "1 if the policy is paused",
                                   labels=["policy"])
        success = GaugeMetricFamily("domsnap_policy_last_success_timestamp_seconds",
                                    "End of the policy's last run in which every domain "
                                    "succeeded", labels=["policy"])
        last_run = GaugeMetricFamily("domsnap_policy_last_run_domains",
                                     "Domains of the policy's last run by outcome",
                                     labels=["policy", "outcome"])
        ok = self.pstore.policy_success()
        for pol in self.pstore.all():
            period.add_metric([pol.name], policy_period_s(pol, now=self.clock()))
            paused.add_metric([pol.name], 1.0 if pol.paused else 0.0)
            if pol.name in ok:
                success.add_metric([pol.name], ok[pol.name])
            runs = self.pstore.runs(pol.name, limit=1)
            if runs:
                for outcome in ("succeeded", "failed", "skipped"):
                    last_run.add_metric([pol.name, outcome], float(sum(
                        1 for d in runs[0].domains if d.outcome == outcome)))
        yield from (period, paused, success, last_run)

    def _hosts(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("domsnap_host_up", "1 while the host's worker heartbeats",
                               labels=["host"])
        for host in self.store.hosts():
            up.add_metric([host], 1.0 if self.store.host_alive(host) else 0.0)
        yield up


def registry(store: Store) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(DomsnapCollector(store))
    return reg


def exposition(store: Store) -> str:
    """The metrics once, in Prometheus' text format."""
    return generate_latest(registry(store)).decode()


def serve(store: Store, port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104 - a metrics port
    """Serve /metrics on ``port`` in a daemon thread."""
    start_http_server(port, addr=addr, registry=registry(store))

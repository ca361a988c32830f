"""Request metrics in the Prometheus text format (version 0.0.4), written by hand.

Three kinds of series are enough here, so they are ~60 lines rather than another
dependency: request counts and a latency histogram per route template and status
(an ASGI middleware feeds them), plus the engine's counters and gauges read at scrape
time.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class RequestMetrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.counts: dict[tuple[str, str, str], int] = defaultdict(int)
        self.buckets: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * len(LATENCY_BUCKETS))
        self.sums: dict[tuple[str, str], float] = defaultdict(float)
        self.totals: dict[tuple[str, str], int] = defaultdict(int)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.counts[(method, route, str(status))] += 1
            key = (method, route)
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    self.buckets[key][i] += 1
            self.sums[key] += seconds
            self.totals[key] += 1

    def render(self, engine_stats: dict | None) -> str:
        lines = ["# HELP selftrain_http_requests_total HTTP requests by route and status.",
                 "# TYPE selftrain_http_requests_total counter"]
        with self._lock:
            for (method, route, status), n in sorted(self.counts.items()):
                lines.append(f'selftrain_http_requests_total{{method="{method}",route="{_esc(route)}",'
                             f'status="{status}"}} {n}')
            lines += ["# HELP selftrain_http_request_seconds HTTP request latency.",
                      "# TYPE selftrain_http_request_seconds histogram"]
            for (method, route), counts in sorted(self.buckets.items()):
                labels = f'method="{method}",route="{_esc(route)}"'
                for bound, n in zip(LATENCY_BUCKETS, counts):
                    lines.append(f'selftrain_http_request_seconds_bucket{{{labels},le="{bound}"}} {n}')
                total = self.totals[(method, route)]
                lines.append(f'selftrain_http_request_seconds_bucket{{{labels},le="+Inf"}} {total}')
                lines.append(f"selftrain_http_request_seconds_sum{{{labels}}} {self.sums[(method, route)]:.6f}")
                lines.append(f"selftrain_http_request_seconds_count{{{labels}}} {total}")
        if engine_stats:
            for name, kind, help_ in (
                    ("batches", "counter", "Generation batches run."),
                    ("batch_rows", "counter", "Requests generated in batches (rows / batches = mean batch size)."),
                    ("generated_tokens", "counter", "Tokens generated."),
                    ("prompt_tokens", "counter", "Prompt tokens processed."),
                    ("rejected", "counter", "Requests refused with 429 because the queue was full."),
                    ("swaps", "counter", "Model versions swapped in without a restart."),
                    ("failed_batches", "counter", "Batches that failed with an error."),
                    ("queue_depth", "gauge", "Requests waiting for a batch."),
                    ("queue_size", "gauge", "Capacity of the queue.")):
                metric = f"selftrain_engine_{name}" + ("_total" if kind == "counter" else "")
                lines += [f"# HELP {metric} {help_}", f"# TYPE {metric} {kind}",
                          f"{metric} {engine_stats.get(name, 0)}"]
            lines += ["# HELP selftrain_model_info The model version in memory.",
                      "# TYPE selftrain_model_info gauge",
                      f'selftrain_model_info{{version="{_esc(str(engine_stats.get("version")))}"}} 1']
        return "\n".join(lines) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MetricsMiddleware:
    """Pure ASGI (no per-request task or body buffering): times each HTTP request and
    labels it with its route template, so /api/interactions/7 and /8 share a series."""

    def __init__(self, app, metrics: RequestMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        began = time.perf_counter()
        status = 500

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe(scope["method"], route, status, time.perf_counter() - began)

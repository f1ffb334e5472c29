"""The service's counters in the Prometheus text format (version 0.0.4), written here: the format is a few
lines of text, and prometheus_client is not among the project's locked packages.

Every metric is updated from the event loop's thread or under a lock, so a scrape sees a consistent set."""

from __future__ import annotations

import bisect
import threading

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    escaped = (
        f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34)).replace(chr(10), " ")}"'
        for k, v in pairs
    )
    return "{" + ",".join(escaped) + "}"


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) else str(int(value))


class Counter:
    def __init__(self, name: str, help_text: str, label: str | None = None):
        self.name, self.help, self.label = name, help_text, label
        self.values: dict[str, float] = {}
        self._lock = threading.Lock()

    def inc(self, label_value: str = "", amount: float = 1.0) -> None:
        with self._lock:
            self.values[label_value] = self.values.get(label_value, 0.0) + amount

    def get(self, label_value: str = "") -> float:
        return self.values.get(label_value, 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            items = sorted(self.values.items()) or ([] if self.label else [("", 0.0)])
        for value, count in items:
            labels = _labels(((self.label, value),)) if self.label else ""
            lines.append(f"{self.name}{labels} {_number(count)}")
        return lines


class Gauge:
    def __init__(self, name: str, help_text: str, read):
        self.name, self.help, self.read = name, help_text, read  # read(): the current value, at scrape time

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge", f"{self.name} {_number(self.read())}"]


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]):
        self.name, self.help, self.buckets = name, help_text, tuple(sorted(buckets))
        self.counts = [0] * (len(self.buckets) + 1)  # the last one: above every bound (+Inf only)
        self.sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self.counts[bisect.bisect_left(self.buckets, value)] += 1
            self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            counts, total = list(self.counts), self.sum
        running = 0
        for bound, count in zip(self.buckets, counts, strict=False):
            running += count
            lines.append(f'{self.name}_bucket{{le="{_number(bound)}"}} {running}')
        running += counts[-1]
        lines += [
            f'{self.name}_bucket{{le="+Inf"}} {running}',
            f"{self.name}_sum {total!r}",
            f"{self.name}_count {running}",
        ]
        return lines


class Metrics:
    """What /metrics shows: requests by status, latency, batch sizes, queue depth, failures by reason."""

    def __init__(self, queue_depth=lambda: 0, in_flight=lambda: 0):
        self.requests = Counter("decontext_requests_total", "Protect requests answered, by HTTP status.", "status")
        self.failures = Counter(
            "decontext_failures_total", "Protect requests not served, by reason (client or server side).", "reason"
        )
        self.images = Counter("decontext_images_protected_total", "Images protected and returned.")
        self.latency = Histogram(
            "decontext_request_seconds", "Time from a protect request's arrival to its answer.", LATENCY_BUCKETS
        )
        self.batches = Histogram(
            "decontext_batch_size", "Images per batch run by the protecting worker.", BATCH_BUCKETS
        )
        self.queue_depth = Gauge("decontext_queue_depth", "Requests waiting for the protecting worker.", queue_depth)
        self.in_flight = Gauge("decontext_in_flight", "Protect requests being handled now.", in_flight)

    def render(self) -> str:
        parts = (
            self.requests,
            self.failures,
            self.images,
            self.latency,
            self.batches,
            self.queue_depth,
            self.in_flight,
        )
        return "\n".join(line for part in parts for line in part.render()) + "\n"

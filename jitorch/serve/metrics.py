"""The server's Prometheus metrics, kept in memory and written in Prometheus' text format (version
0.0.4): counters of requests and errors, histograms of request latency and batch size."""

from __future__ import annotations

import bisect
import threading

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _escaped(value) -> str:
    """A label value as the text format writes it: backslash, double quote and newline escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escaped(v)}"' for k, v in sorted(labels.items())) + "}"


class Metrics:
    """Named counters and histograms, each by a set of labels; `text()` is the /metrics page."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple, float]] = {}
        self._histograms: dict[str, tuple[tuple, dict[tuple, list]]] = {}
        self._help: dict[str, str] = {}

    def counter(self, name: str, help_text: str) -> None:
        self._counters.setdefault(name, {})
        self._help[name] = help_text

    def histogram(self, name: str, help_text: str, buckets: tuple) -> None:
        self._histograms.setdefault(name, (tuple(buckets), {}))
        self._help[name] = help_text

    def inc(self, name: str, labels: dict[str, str], amount: float = 1.0) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            values = self._counters[name]
            values[key] = values.get(key, 0.0) + amount

    def observe(self, name: str, labels: dict[str, str], value: float) -> None:
        key = tuple(sorted(labels.items()))
        buckets, series = self._histograms[name]
        with self._lock:
            counts = series.setdefault(key, [0] * (len(buckets) + 1) + [0.0])  # per bucket, +Inf, then the sum
            counts[bisect.bisect_left(buckets, value)] += 1
            counts[-1] += value

    def text(self) -> str:
        lines = []
        with self._lock:
            for name, values in self._counters.items():
                lines += [f"# HELP {name} {self._help[name]}", f"# TYPE {name} counter"]
                lines += [f"{name}{_labels(dict(key))} {value:g}" for key, value in values.items()]
            for name, (buckets, series) in self._histograms.items():
                lines += [f"# HELP {name} {self._help[name]}", f"# TYPE {name} histogram"]
                for key, counts in series.items():
                    labels, running = dict(key), 0
                    for bound, n in zip((*buckets, "+Inf"), counts[:-1]):
                        running += n
                        lines.append(f"{name}_bucket{_labels({**labels, 'le': str(bound)})} {running}")
                    lines.append(f"{name}_sum{_labels(labels)} {counts[-1]:g}")
                    lines.append(f"{name}_count{_labels(labels)} {running}")
        return "\n".join(lines) + "\n"

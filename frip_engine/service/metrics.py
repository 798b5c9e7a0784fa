"""Request counters and latency histograms, served in Prometheus' text format.

Labels are route names, methods, statuses and error codes only: no engine names, subject
ids or vendors, so the unauthenticated endpoint says how busy the service is, not for whom.
"""

from __future__ import annotations

import threading
from collections import defaultdict

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.errors: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, list[float]] = {}  # route -> bucket counts, then sum, count

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, method, status)] += 1
            row = self.seconds.setdefault(route, [0.0] * (len(BUCKETS) + 2))
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    row[i] += 1
            row[-2] += seconds
            row[-1] += 1

    def error(self, code: str) -> None:
        with self._lock:
            self.errors[code] += 1

    def render(self, engines_open: int) -> str:
        lines = [
            "# TYPE frip_requests_total counter",
            *(
                f'frip_requests_total{{route="{r}",method="{m}",status="{s}"}} {n}'
                for (r, m, s), n in sorted(self.requests.items())
            ),
            "# TYPE frip_errors_total counter",
            *(f'frip_errors_total{{code="{c}"}} {n}' for c, n in sorted(self.errors.items())),
            "# TYPE frip_request_seconds histogram",
        ]
        for route, row in sorted(self.seconds.items()):
            for bound, count in zip(BUCKETS, row, strict=False):
                lines.append(
                    f'frip_request_seconds_bucket{{route="{route}",le="{bound}"}} {count:g}'
                )
            lines.append(f'frip_request_seconds_bucket{{route="{route}",le="+Inf"}} {row[-1]:g}')
            lines.append(f'frip_request_seconds_sum{{route="{route}"}} {row[-2]:.6f}')
            lines.append(f'frip_request_seconds_count{{route="{route}"}} {row[-1]:g}')
        lines += ["# TYPE frip_engines_open gauge", f"frip_engines_open {engines_open}"]
        return "\n".join(lines) + "\n"

"""Request limits: a token bucket per API key, a budget of audited refusals per source,
and a body size cap while reading."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

from frip_engine.service.errors import PayloadTooLargeError, RateLimitError

Row = TypeVar("Row")

# What a request may hold; the OpenAPI description states the same numbers and patterns.
SUBJECT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:+-]{0,127}$")
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{2}==)$"
MAX_TOP_K = 100
MAX_PROBE_CLUSTERS = 65_536
MAX_SEQ = 2**63 - 1  # SQLite's largest integer: audit sequence numbers never pass it
MAX_DIMENSION = 4096  # numbers in one embedding (each engine wants exactly its own dimension)
MAX_IMAGES = 10  # per enrolment
MAX_EMBEDDINGS = 10  # per enrolment
MAX_TRACKED = 10_000  # rate-limit buckets kept before the refilled ones are dropped


class RateLimiter:
    """``rate`` requests per second per key, with bursts of up to ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)
        self._lock = threading.Lock()

    def take(self, key: str) -> None:
        """Spend one request of ``key``'s allowance, or raise RateLimitError (429)."""
        wait = self.wait(key)
        if wait > 0:
            raise RateLimitError(
                f"rate limit of {self.rate:g} requests/s (burst {self.burst}) exceeded; "
                f"retry in {wait:.2f} s",
                retry_after=wait,
            )

    def wait(self, key: str) -> float:
        """Spend one token of ``key`` and return 0, or return the seconds until one is due."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            if len(self._buckets) >= MAX_TRACKED:
                self._forget_full(now)
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                return (1.0 - tokens) / self.rate
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that have refilled (a new one starts full anyway), so many
        client addresses cannot grow the table without bound."""
        refill = self.burst / self.rate
        for key in [k for k, (_, last) in self._buckets.items() if now - last >= refill]:
            del self._buckets[key]


class RefusalBudget(Generic[Row]):
    """How many refused (401/403) attempts of one source are written to the audit log: a
    burst, then ``rate`` per second. The rest are counted, and the count is written on the
    source's next audited row (or with its last refused row when the service stops), so a
    flood of bad keys costs a bounded number of fsync'd rows, yet none goes unrecorded."""

    def __init__(self, rate: float = 0.5, burst: int = 20) -> None:
        self._bucket = RateLimiter(rate, burst)
        self._suppressed: dict[str, tuple[Row, int]] = {}  # source -> last row, count
        self._lock = threading.Lock()

    def admit(self, source: str, row: Row) -> int | None:
        """None: do not write ``row``; else write it, noting this many suppressed before."""
        with self._lock:
            if self._bucket.wait(source) > 0:
                if source not in self._suppressed and len(self._suppressed) >= MAX_TRACKED:
                    source = "*"  # so many sources at once: their counts go together
                count = self._suppressed.get(source, (row, 0))[1]
                self._suppressed[source] = (row, count + 1)
                return None
            return self._suppressed.pop(source, (row, 0))[1]

    def drain(self) -> list[tuple[Row, int]]:
        """Each source's last suppressed row and how many were suppressed (then forgotten)."""
        with self._lock:
            pending, self._suppressed = list(self._suppressed.values()), {}
            return pending


async def read_limited(chunks: AsyncIterator[bytes], declared: str | None, limit: int) -> bytes:
    """The whole body, refused as soon as it is known to exceed ``limit`` bytes."""
    if (
        declared is not None
        and declared.isdigit()
        and (len(declared) > 18 or int(declared) > limit)
    ):
        raise PayloadTooLargeError(f"the declared request body is over the limit of {limit} bytes")
    body = bytearray()
    async for chunk in chunks:
        body.extend(chunk)
        if len(body) > limit:
            raise PayloadTooLargeError(f"request body is over the limit of {limit} bytes")
    return bytes(body)

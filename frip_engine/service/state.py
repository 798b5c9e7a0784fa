"""What every handler of the service shares: its configuration, its state, and the
context of one authorised request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from frip_engine.private import private_dir
from frip_engine.service.attributes import AttributeStore
from frip_engine.service.audit import AuditLog, Event, suppressed
from frip_engine.service.consents import Consents
from frip_engine.service.db import Database
from frip_engine.service.decoding import ImageDecoder
from frip_engine.service.edge import EdgePool
from frip_engine.service.limits import MAX_EMBEDDINGS, MAX_IMAGES, RateLimiter, RefusalBudget
from frip_engine.service.metrics import Metrics
from frip_engine.service.pool import EnginePool
from frip_engine.service.replay import ReplayGuard
from frip_engine.service.vendors import Caller, Vendors

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from frip_engine.engine import Engine


# A route handler, and one row of the route table: (path, handler, HTTP method). The
# handler's name is the operation's (OpenAPI operationId, metrics, the audit's route).
Handler = Callable[["Service", "Request"], Awaitable["Response"]]
Route = tuple[str, Handler, str]


@dataclass
class ServiceConfig:
    """Where engines live and the limits every request is held to."""

    home: Path
    max_body_bytes: int = 8 * 1024 * 1024
    rate: float = 50.0  # requests per second per API key (0: unlimited)
    burst: int = 100
    replay_window: float = 300.0
    max_images: int = MAX_IMAGES  # per enrolment
    max_embeddings: int = MAX_EMBEDDINGS  # per enrolment
    max_image_pixels: int = 24_000_000
    max_decode_bytes: int = 384 * 1024 * 1024  # estimated peak memory of one image decode
    access_log: bool = True  # one line per request: route and status, never a path
    # queued identify/verify requests of one engine with equal options scored together
    # in one pass (1: no batching)
    batch_max: int = 32
    batch_wait_ms: float = 2.0  # longest wait for a batch to fill, once requests queue
    # queued enrolments of one engine planned, encrypted and committed as one group (its
    # delta costs d encryptions whatever its size), and the longest wait for a group to
    # fill once enrolments queue; independent of batch_max (identify batching)
    enrol_group_max: int = 64
    enrol_group_wait_ms: float = 5.0
    portal_desk: str | None = None  # the vendor the registration portal links as (None: off)

    def check(self) -> None:
        """Raise InputError unless the batching and enrolment-group limits make sense."""
        from frip_engine.errors import InputError

        if self.batch_max < 1:
            raise InputError(f"--batch-max must be >= 1 (1: no batching), not {self.batch_max}")
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise InputError(f"--batch-wait-ms must be 0 to 10000, not {self.batch_wait_ms}")
        if not 1 <= self.enrol_group_max <= 4096:
            raise InputError(
                f"--enrol-group-max must be 1 to 4096 (1: one enrolment per group), "
                f"not {self.enrol_group_max}"
            )
        if not 0 <= self.enrol_group_wait_ms <= 10_000:
            raise InputError(
                f"--enrol-group-wait-ms must be 0 to 10000, not {self.enrol_group_wait_ms}"
            )


@dataclass
class Context:
    """An authorised request: who sent it, its id, and when it arrived."""

    caller: Caller
    request_id: str | None
    received: float
    handler_start: float
    network: float = 0.0
    decoding: float = 0.0


class Service:
    """The state the handlers share: registries, logs, limits, open engines, and the route
    table (which /openapi.json describes)."""

    def __init__(self, config: ServiceConfig, routes: Sequence[Route] = ()) -> None:
        self.config = config
        self.routes = list(routes)
        private_dir(config.home)
        self.db = Database(config.home / "service.sqlite")
        self.vendors = Vendors(self.db)
        self.replay = ReplayGuard(self.db, config.replay_window)
        self.attributes = AttributeStore(self.db)
        self.consents = Consents(self.db)
        self.audit = AuditLog(config.home)
        self.limiter = RateLimiter(config.rate, config.burst)
        self.refusals: RefusalBudget[Event] = RefusalBudget()
        self.decoder = ImageDecoder(config.max_image_pixels, config.max_decode_bytes)
        self.edge = EdgePool()  # image embedding, in worker processes (started on first use)
        self.metrics = Metrics()
        self.pool: EnginePool | None = None
        # engine name -> subjects in an enrolment group planned and not yet settled (read
        # and changed on that engine's thread only)
        self.enrolling: dict[str, set[str]] = {}

    def on_open(self, engine: Engine) -> None:
        """Settle what a crash may have left half-written for this engine."""
        self.attributes.reconcile(engine)
        self.consents.reconcile(engine)
        self.audit.reconcile(engine)

    def engines(self) -> EnginePool:
        assert self.pool is not None, "the service's lifespan has not started"
        return self.pool

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        self.edge.close()
        self.decoder.close()
        for row, count in self.refusals.drain():
            self.audit.append(suppressed(row, count))
        self.audit.close()
        self.db.close()

"""Matching: 1:N identification and 1:1 verification of one probe, with the Table II
timing breakdown plus the server's own stages (module docstring of ``service.app``)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from frip_engine.decision import Decision
from frip_engine.errors import FripError, UnknownSubjectError
from frip_engine.service.edge import Embedded
from frip_engine.service.limits import MAX_PROBE_CLUSTERS, MAX_TOP_K
from frip_engine.service.requests import (
    allow_only,
    authorise,
    event,
    read_json,
    read_probe,
    subject_field,
    threshold_field,
    whole_number,
)
from frip_engine.service.state import Context, Service

if TYPE_CHECKING:
    from frip_engine.engine import Engine
    from frip_engine.probe import Probe


def decision_json(
    decision: Decision, ctx: Context, queued: float, embedded: Embedded | None
) -> dict[str, Any]:
    """The decision's JSON; an image probe's extraction (``embedded``, made in an edge
    worker before the engine saw the probe) counts in its feature_extraction and notes."""
    data = decision.to_dict()
    timings = dict(decision.timings)
    if embedded is not None:
        timings["feature_extraction"] = timings.get("feature_extraction", 0.0) + embedded.seconds
        data["notes"] = [*embedded.notes, *decision.notes]
    timings["request_decoding"] = ctx.decoding
    timings["network"] = ctx.network
    timings["queue_wait"] = queued
    timings["batch_size"] = decision.batch_size
    timings["server_total"] = time.perf_counter() - ctx.received
    data["timings"] = timings
    return data


def timed_json(data: dict[str, Any], ctx: Context, status: int = 200) -> Response:
    """JSON with a Server-Timing header that adds what the body cannot hold: its encoding."""
    start = time.perf_counter()
    body = json.dumps(data, separators=(",", ":")).encode()
    done = time.perf_counter()
    header = f"encode;dur={(done - start) * 1000:.3f}, total;dur={(done - ctx.received) * 1000:.3f}"
    return Response(body, status, {"Server-Timing": header}, media_type="application/json")


async def identify(service: Service, request: Request) -> Response:
    name = request.path_params["engine"]
    ctx = await authorise(service, request, name)
    body = await read_json(service, request, ctx)
    start = time.perf_counter()
    allow_only(body, {"image", "embedding", "template", "top_k", "threshold", "probe_clusters"})
    top_k = whole_number(body.get("top_k", 1), "top_k", 1, MAX_TOP_K)
    fan_out = body.get("probe_clusters")
    if fan_out is not None and fan_out != "all":
        fan_out = whole_number(fan_out, "probe_clusters", 1, MAX_PROBE_CLUSTERS)
    threshold = threshold_field(body)
    probe, embedded = await read_probe(service, body, name)
    ctx.decoding += time.perf_counter() - start - (embedded.seconds if embedded else 0.0)
    slot = await service.engines().get(name)

    def work(engine: Engine, asked: list[tuple[Probe, Context]]) -> list[Decision | FripError]:
        """Every queued request of these options, scored together; each decision audited
        (its own row, all rows in one transaction)."""
        decisions = engine.identify_many(
            [given for given, _ in asked], top_k=top_k, threshold=threshold, probe_clusters=fan_out
        )
        events = [
            event(
                asker,
                "identify",
                name,
                decision.subject_id,
                matched=decision.matched,
                score=decision.score,
                top_k=top_k,
            )
            for (_, asker), decision in zip(asked, decisions, strict=True)
            if isinstance(decision, Decision)
        ]
        service.audit.append_many(events)
        return decisions

    options = ("identify", top_k, threshold, fan_out)  # a batch shares them
    decision, queued = await slot.batch(options, (probe, ctx), work)
    return timed_json(decision_json(decision, ctx, queued, embedded), ctx)


async def verify(service: Service, request: Request) -> Response:
    name = request.path_params["engine"]
    ctx = await authorise(service, request, name)
    body = await read_json(service, request, ctx)
    start = time.perf_counter()
    allow_only(body, {"subject_id", "image", "embedding", "template", "threshold"})
    subject = subject_field(body, existing=True)
    threshold = threshold_field(body)
    probe, embedded = await read_probe(service, body, name)
    ctx.decoding += time.perf_counter() - start - (embedded.seconds if embedded else 0.0)
    slot = await service.engines().get(name)

    def work(engine: Engine) -> Decision:
        if engine.gallery_store.subject(subject) is None:
            raise UnknownSubjectError(f"subject '{subject}' is not enrolled in '{name}'")
        decision = engine.verify(subject, probe, threshold=threshold)
        outcome = {"matched": decision.matched, "score": decision.score}
        service.audit.append(event(ctx, "verify", name, subject, **outcome))
        return decision

    decision, queued = await slot.run(work)
    return timed_json(decision_json(decision, ctx, queued, embedded), ctx)

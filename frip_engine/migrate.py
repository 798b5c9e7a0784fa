"""Move an engine's gallery to another gallery store (``frip engine migrate``).

With the engine open nowhere else (no other process or handle could keep using the old
store) and under its write lock (no enrolment or removal meanwhile): a new store is built
from the ``[gallery_store]`` section given and initialised with the gallery's meta and
public contexts; every block is copied with its slot-map rows and the routing state
through the store contract (``commit_block``), then verified block by block: the copy's
bytes must have the source's SHA-256, and every block's slot map, and the routing state,
must be the same. Only then is the profile switched (written atomically). The old store
is left as it was (its file or schema), for the operator to delete once content.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from frip_engine import plugins
from frip_engine.contracts import GalleryStore, NewSubject
from frip_engine.errors import FripError, StoreError
from frip_engine.profile import save_profile

if TYPE_CHECKING:
    from frip_engine.engine import Engine


def _digest(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def migrate_store(engine: Engine, section: dict[str, Any]) -> dict[str, Any]:
    """Copy the engine's gallery into the store ``section`` describes (``plugin`` and its
    parameters), verify it and switch the profile to it. Returns what was moved: from,
    to, blocks, subjects. Raises ProfileError for a bad section, StoreError when the
    target already holds a gallery (named: another engine's, or an earlier copy of this
    one) or the copy fails part way or differs (the profile then still names the old
    store, which is unchanged), EngineInUseError while any other handle, in this
    or another process (a running ``frip serve``), has the engine open: that user would
    keep writing into the old store."""
    params = {k: v for k, v in section.items() if k != "plugin"}
    with engine._use.alone("frip engine migrate"), engine._writing():
        target: GalleryStore = plugins.create("gallery_store", str(section["plugin"]), **params)
        target.bind(str(engine.directory))
        source = engine.gallery_store
        if target.describe() == source.describe():
            raise StoreError(f"engine '{engine.name}' already uses {source.describe()}")
        meta = source.meta()
        try:
            target.initialise(meta)
        except FripError as exc:
            refusal = _occupied(engine, source, target, exc)
            target.close()
            raise StoreError(refusal) from exc
        try:  # from here on the target holds a copy this run made
            moved = _copy(source, target, meta)
        except FripError as exc:
            target.close()
            raise StoreError(
                f"engine '{engine.name}': the copy into {target.describe()} failed part way "
                f"({exc}); the engine still uses {source.describe()}, unchanged; delete the "
                "partial copy (this run made it) before trying again"
            ) from exc
        old = source.describe()
        engine.profile.sections["gallery_store"] = dict(section)
        save_profile(engine.profile, engine.directory / "profile.toml")
        source.close()
        engine.gallery_store = engine.parts.gallery_store = target
        engine._blocks.clear()
        engine._slot_map = None
    return {"from": old, "to": target.describe(), **moved}


def _occupied(engine: Engine, source: GalleryStore, target: GalleryStore, exc: FripError) -> str:
    """Why the copy could not start in ``target`` (initialising it raised ``exc``): the
    gallery already there is named (another engine's, or an earlier copy of this one), never
    offered for deletion unless it is provably this engine's."""
    where, kept = target.describe(), f"the engine still uses {source.describe()}, unchanged"
    try:
        there = target.meta()
    except FripError:
        return f"engine '{engine.name}': cannot start the copy into {where} ({exc}); {kept}"
    if there.get("engine_id") == engine.profile.engine_id:
        return (
            f"engine '{engine.name}': {where} already holds an earlier copy of this engine's "
            f"gallery (engine id {engine.profile.engine_id}: a store it moved away from, or "
            f"an earlier migrate's copy); {kept}. Choose another target, or delete that copy "
            "first if you no longer need it"
        )
    owner = there.get("name", "?")
    return (
        f"engine '{engine.name}': {where} already holds the gallery of engine '{owner}' "
        f"(engine id {there.get('engine_id', '?')}), not this engine's: choose another "
        f"target and keep that one; {kept}"
    )


def _copy(source: GalleryStore, target: GalleryStore, meta: dict[str, str]) -> dict[str, int]:
    """Copy everything but the meta (``target`` is initialised with it) from ``source``
    into ``target`` and verify it; the number of blocks and subjects copied."""
    for version in range(1, int(meta["key_version"]) + 1):
        try:
            context = source.public_context(version)
        except StoreError:  # a retired key's context may be gone
            continue
        target.put_public_context(version, context)
    routing = source.read_routing()
    by_block: dict[int, list[NewSubject]] = {}
    enrolled_at: dict[str, str] = {}
    for record in source.subjects():
        by_block.setdefault(record.block_id, []).append(
            NewSubject(record.subject_id, record.slot, record.images)
        )
        enrolled_at[record.subject_id] = record.enrolled_at
    placed: dict[int, tuple[int, str]] = {}
    for info in source.blocks():
        _, data = source.read_block(info.block_id)  # checked against its SHA-256
        placed[info.block_id] = (
            target.commit_block(
                None,
                0,
                info.partition,
                info.key_version,
                info.capacity,
                data,
                added=by_block.get(info.block_id, []),
                routing=(0, routing[1]) if routing and not placed else None,
            ),
            _digest(data),
        )
    keep_dates = getattr(target, "restore_enrolled_at", None)
    if callable(keep_dates):  # the built-in stores keep each subject's enrolment time
        keep_dates(enrolled_at)
    _verify(source, target, placed, routing, dated=callable(keep_dates))
    return {"blocks": len(placed), "subjects": len(enrolled_at)}


def _verify(
    source: GalleryStore,
    target: GalleryStore,
    placed: dict[int, tuple[int, str]],
    routing: tuple[int, bytes] | None,
    dated: bool,
) -> None:
    """Raise StoreError unless every block, its slot map (with enrolment times when
    ``dated``) and the routing state in ``target`` equal the source's."""

    def rows(store: GalleryStore) -> set[tuple[str, int, int, str]]:
        return {
            (s.subject_id, s.slot, s.images, s.enrolled_at if dated else "")
            for s in store.subjects()
        }

    for source_id, (target_id, checksum) in placed.items():
        _, copied = target.read_block(target_id)
        if _digest(copied) != checksum:
            raise StoreError(f"block {source_id} differs after the copy (SHA-256)")
    wanted = {(s.subject_id, placed[s.block_id][0], s.slot) for s in source.subjects()}
    got = {(s.subject_id, s.block_id, s.slot) for s in target.subjects()}
    if wanted != got or rows(source) != rows(target):
        raise StoreError("the slot map differs after the copy")
    copied_routing = target.read_routing()
    if (routing is None) != (copied_routing is None) or (
        routing and copied_routing and routing[1] != copied_routing[1]
    ):
        raise StoreError("the routing state differs after the copy")

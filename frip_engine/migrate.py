"""Move an engine's gallery to another gallery store (``frip engine migrate``).

Under the engine's write lock (no enrolment or removal meanwhile): a new store is built
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
    target already holds a gallery or the copy differs (the profile then still names
    the old store, which is unchanged)."""
    params = {k: v for k, v in section.items() if k != "plugin"}
    target: GalleryStore = plugins.create("gallery_store", str(section["plugin"]), **params)
    with engine._writing():
        target.bind(str(engine.directory))
        source = engine.gallery_store
        if target.describe() == source.describe():
            raise StoreError(f"engine '{engine.name}' already uses {source.describe()}")
        try:
            moved = _copy(source, target)
        except FripError as exc:
            target.close()
            raise StoreError(
                f"engine '{engine.name}': the copy into {target.describe()} failed ({exc}); "
                f"the engine still uses {source.describe()}, unchanged; delete the partial "
                "copy before trying again"
            ) from exc
        old = source.describe()
        engine.profile.sections["gallery_store"] = dict(section)
        save_profile(engine.profile, engine.directory / "profile.toml")
        source.close()
        engine.gallery_store = engine.parts.gallery_store = target
        engine._blocks.clear()
        engine._slot_map = None
    return {"from": old, "to": target.describe(), **moved}


def _copy(source: GalleryStore, target: GalleryStore) -> dict[str, int]:
    meta = source.meta()
    target.initialise(meta)
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

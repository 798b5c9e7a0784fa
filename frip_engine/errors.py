"""Every error the engine raises on purpose, in one typed tree.

Each class carries the CLI exit code it maps to, so the CLI never guesses and
scripts can tell a bad input (2) from a missing engine (3) or a security fault (5).
Errors that exist only for the HTTP service (malformed requests, API keys, rate
limits) and its status codes live in ``frip_engine.service.errors``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

Item = TypeVar("Item")
Answer = TypeVar("Answer")


class FripError(Exception):
    """Base of every deliberate frip-engine error."""

    exit_code = 1


class InputError(FripError):
    """The caller gave something the engine cannot use (file, image, embedding, option)."""

    exit_code = 2


class ImageError(InputError):
    """An image could not be decoded or is out of bounds."""


class NoFaceError(InputError):
    """No face was found in an image."""


class EmbeddingError(InputError):
    """An embedding has the wrong shape, is not finite, or has zero norm."""


class SubjectError(InputError):
    """A subject is unknown or already enrolled."""


class ProbeError(InputError):
    """Not exactly one probe was given to identify or verify (an image, an embedding or a
    vendor template)."""


class DestinationError(InputError):
    """A file or folder cannot be created where the caller asked (a read-only or virtual
    file system, a missing permission, a file in the way)."""


class EngineClosedError(InputError):
    """An operation on an engine after its ``close()`` (or after leaving its ``with``
    block): open the engine again to use it."""


class SeveralFacesError(InputError):
    """An image holds several faces where exactly one is required (an extractor whose
    face selection policy is ``single``)."""


class NotFoundError(FripError):
    """An engine or another named thing does not exist."""

    exit_code = 3


class MissingFileError(NotFoundError):
    """A file the caller named (embedding, image, template, profile, index) does not exist."""


class ProfileError(FripError):
    """An engine profile is invalid: unknown plugin, bad parameter, incompatible choice."""

    exit_code = 4


class EngineExistsError(ProfileError):
    """An engine of that name exists already (or another process is creating it)."""


class PluginError(ProfileError):
    """A plugin is unknown, failed to load, or misses an optional dependency."""


class ExecutorConnectError(ProfileError):
    """The cluster an executor is configured for cannot be joined: its address does not
    answer, or it runs another version of the cluster software (Ray, Python)."""


class WorkerStartError(FripError):
    """Worker processes cannot start from where the engine is used (a script without an
    ``if __name__ == "__main__":`` guard)."""


class WorkerLostError(FripError):
    """A worker process (image embedding, encryption) ended before answering (killed, out
    of memory); nothing was decided or stored for the request: retry after
    ``retry_after`` seconds (a new worker takes its place)."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SecurityError(FripError):
    """A security property would be broken (weak HE parameters, secret in the wrong place)."""

    exit_code = 5


class KeyStoreError(SecurityError):
    """The key store cannot produce the secret key (wrong passphrase, missing key, tampering)."""


class KeyStoreUnavailableError(KeyStoreError):
    """The key store is busy or failing transiently (retries exhausted, a rotation's lock
    held too long): nothing is wrong with the keys; retry later."""


class StoreError(FripError):
    """The gallery store is unreadable, corrupted, or from an unknown schema version."""

    exit_code = 6


class CorruptionError(StoreError):
    """A stored blob failed its checksum: it is reported, never used."""


class BackendError(FripError):
    """The HE backend rejected an operation (foreign ciphertext, wrong parameters)."""

    exit_code = 7


class ShareError(BackendError):
    """A secret-shared probe, or the two matchers' scores of it, are malformed,
    mismatched (another probe's partner share, another key version), or incomplete: the key
    service never decides from one share."""


class UnknownSubjectError(NotFoundError, SubjectError):
    """A named subject is not enrolled (or not linked) where the caller looked: not found
    (exit 3), and still a SubjectError for callers that catch those."""


class NotOnePersonError(SubjectError):
    """The images or embeddings given for one subject are less alike than one person's
    photos are (two people under one subject id)."""


class DuplicateSubjectError(SubjectError):
    """A subject (or a linkage consent) already exists under that id."""


def each_or_error(
    function: Callable[[Item], Answer], items: Iterable[Item]
) -> list[Answer | FripError]:
    """``function`` of each item, in order, or the FripError it raised for that item (the
    item fails alone; any other exception propagates)."""
    answers: list[Answer | FripError] = []
    for item in items:
        try:
            answers.append(function(item))
        except FripError as exc:
            answers.append(exc)
    return answers


class EngineInUseError(StoreError):
    """The engine is open elsewhere (a running ``frip serve``, a script, another handle in
    this process) while an operation needs it unused: ``frip engine migrate`` swaps its
    gallery store, which an open user would not see. Or the reverse: the engine cannot be
    opened while it is being migrated. Nothing was changed; retry after ``retry_after``
    seconds (the service answers 503 ``engine_in_use``)."""

    retry_after = 5.0


class StoreUnavailableError(StoreError):
    """The gallery store cannot be reached right now (its server down, restarting or
    refusing connections) and nothing was written: nothing is wrong with the gallery;
    retry after ``retry_after`` seconds. The service answers 503 ``store_unavailable``
    with Retry-After. A store raises it only when it knows nothing was written (no
    connection, or none before anything was sent); a connection lost while a COMMIT's
    outcome is unknown stays a plain StoreError."""

    def __init__(self, message: str, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CommitOutcomeUnknownError(StoreError):
    """The connection to the gallery store was lost while a COMMIT was under way: the
    store may or may not have written it. Not retried (a retry could enrol twice what the
    store did write); ``frip subjects`` (or the store's truth, re-read on the next
    operation) tells which."""

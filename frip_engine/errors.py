"""Every error the engine raises on purpose, in one place.

Each class carries the CLI exit code it maps to, so the CLI never guesses and
scripts can tell a bad input (2) from a missing engine (3) or a security fault (5).
"""

from __future__ import annotations


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


class NotFoundError(FripError):
    """An engine or another named thing does not exist."""

    exit_code = 3


class MissingFileError(NotFoundError):
    """A file the caller named (embedding, image, template, profile, index) does not exist."""


class ProfileError(FripError):
    """An engine profile is invalid: unknown plugin, bad parameter, incompatible choice."""

    exit_code = 4


class PluginError(ProfileError):
    """A plugin is unknown, failed to load, or misses an optional dependency."""


class WorkerStartError(FripError):
    """Worker processes cannot start from where the engine is used (a script without an
    ``if __name__ == "__main__":`` guard)."""


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


class UnknownSubjectError(NotFoundError, SubjectError):
    """A named subject is not enrolled (or not linked) where the caller looked: not found
    (exit 3), and still a SubjectError for callers that catch those."""


class NotOnePersonError(SubjectError):
    """The images or embeddings given for one subject are less alike than one person's
    photos are (two people under one subject id)."""


class DuplicateSubjectError(SubjectError):
    """A subject (or a linkage consent) already exists under that id."""


class LinkageError(InputError):
    """An opt-in linkage enrolled the subject into none of the engines asked for."""


class RequestError(InputError):
    """An HTTP request is malformed: a missing or mistyped field, an unknown parameter."""


class MalformedJSONError(RequestError):
    """The request body is not one JSON object."""


class Base64Error(RequestError):
    """A field that must carry base64 (an image, a vendor template) does not."""


class RequestIdError(RequestError):
    """X-Request-Id or X-Request-Time is missing, malformed, or outside the time window."""


class ReplayError(InputError):
    """A request id this key has already used: the request was re-sent or replayed."""


class MediaTypeError(InputError):
    """The request body is not ``application/json``."""


class PayloadTooLargeError(InputError):
    """The request body is over the service's size limit."""


class AuthError(FripError):
    """The caller gave no credentials, or credentials the service does not accept."""

    exit_code = 8


class MissingKeyError(AuthError):
    """No ``Authorization: Bearer`` API key was sent."""


class InvalidKeyError(AuthError):
    """The API key is malformed or unknown."""


class RevokedKeyError(AuthError):
    """The API key was revoked."""


class ForbiddenError(AuthError):
    """The API key's vendor has no rights to that engine (whether it exists or not)."""


class RateLimitError(FripError):
    """The API key sent more requests than its rate allows; retry later."""

    exit_code = 9

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# HTTP status and stable error code per class; a subclass not listed takes its nearest
# listed base. Codes are part of the service's API: add new ones, never rename them.
HTTP_ERRORS: dict[type[FripError], tuple[int, str]] = {
    FripError: (500, "internal_error"),
    InputError: (400, "invalid_input"),
    ImageError: (422, "bad_image"),
    NoFaceError: (422, "no_face"),
    EmbeddingError: (422, "bad_embedding"),
    SubjectError: (400, "bad_subject"),
    NotOnePersonError: (422, "not_one_person"),
    UnknownSubjectError: (404, "subject_not_found"),
    DuplicateSubjectError: (409, "subject_exists"),
    LinkageError: (422, "linkage_failed"),
    RequestError: (400, "bad_request"),
    MalformedJSONError: (400, "malformed_json"),
    Base64Error: (400, "bad_base64"),
    RequestIdError: (400, "bad_request_id"),
    ReplayError: (409, "replayed_request"),
    MediaTypeError: (415, "unsupported_media_type"),
    PayloadTooLargeError: (413, "payload_too_large"),
    NotFoundError: (404, "not_found"),
    ProfileError: (500, "engine_misconfigured"),
    SecurityError: (500, "security_error"),
    KeyStoreUnavailableError: (503, "key_store_unavailable"),
    StoreError: (500, "store_error"),
    CorruptionError: (500, "store_corrupted"),
    BackendError: (500, "backend_error"),
    AuthError: (401, "unauthorized"),
    MissingKeyError: (401, "missing_api_key"),
    InvalidKeyError: (401, "invalid_api_key"),
    RevokedKeyError: (401, "api_key_revoked"),
    ForbiddenError: (403, "engine_forbidden"),
    RateLimitError: (429, "rate_limited"),
}


def http_error(exc: FripError) -> tuple[int, str]:
    """The HTTP status and stable code of an error: its own entry or its nearest base's."""
    for cls in type(exc).__mro__:
        if cls in HTTP_ERRORS:
            return HTTP_ERRORS[cls]
    return HTTP_ERRORS[FripError]

"""The service's own errors and the one table mapping every error to HTTP.

The classes here exist only for HTTP (a malformed request, an API key, a rate limit); they
join the core's typed tree (``frip_engine.errors``) under its bases, so a handler raises
them like any other FripError. ``HTTP_ERRORS`` gives each class, core or service, its
status and stable JSON code; ``http_error`` reads it for any error.
"""

from __future__ import annotations

from frip_engine.errors import (
    BackendError,
    CorruptionError,
    DuplicateSubjectError,
    EmbeddingError,
    EngineInUseError,
    FripError,
    ImageError,
    InputError,
    KeyStoreUnavailableError,
    NoFaceError,
    NotFoundError,
    NotOnePersonError,
    ProbeError,
    ProfileError,
    SecurityError,
    SeveralFacesError,
    ShareError,
    StoreError,
    StoreUnavailableError,
    SubjectError,
    UnknownSubjectError,
    WorkerLostError,
)


class LinkageError(InputError):
    """An opt-in linkage enrolled the subject into none of the engines asked for;
    ``codes`` maps each engine to the stable code of why not (``HTTP_ERRORS``)."""

    def __init__(self, message: str, codes: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.codes = dict(codes or {})


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


class MissingKeyError(AuthError):
    """No ``Authorization: Bearer`` API key was sent."""


class InvalidKeyError(AuthError):
    """The API key is malformed or unknown."""


class RevokedKeyError(AuthError):
    """The API key was revoked."""


class ForbiddenError(AuthError):
    """The API key's vendor has no rights to that engine (whether it exists or not)."""


class RateLimitError(FripError):
    """The API key sent more requests than its rate allows; retry after ``retry_after``
    seconds."""

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
    SeveralFacesError: (422, "several_faces"),
    EmbeddingError: (422, "bad_embedding"),
    SubjectError: (400, "bad_subject"),
    ProbeError: (400, "bad_request"),  # not exactly one of 'image', 'embedding', 'template'
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
    ShareError: (500, "shared_probe_error"),
    WorkerLostError: (503, "worker_lost"),
    StoreUnavailableError: (503, "store_unavailable"),  # nothing written: retry
    EngineInUseError: (503, "engine_in_use"),  # being migrated: retry when done
}


def http_error(exc: FripError | type[FripError]) -> tuple[int, str]:
    """The HTTP status and stable code of an error (or error class): its own entry or its
    nearest base's."""
    for cls in (exc if isinstance(exc, type) else type(exc)).__mro__:
        if cls in HTTP_ERRORS:
            return HTTP_ERRORS[cls]
    return HTTP_ERRORS[FripError]

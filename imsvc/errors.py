"""The one error tree of imsvc.

ImsvcError                      status  code
 ├── BadRequest                  400     bad_request
 │    ├── InvalidJson            400     invalid_json
 │    └── UnknownType            400     unknown_type   (WebSocket frames)
 ├── Unauthorized                401     unauthorized
 ├── Forbidden                   403     forbidden
 ├── NotFound                    404     not_found
 ├── Conflict                    409     conflict
 ├── PayloadTooLarge             413     payload_too_large
 ├── ValidationFailed            422     validation_error
 ├── RateLimited                 429     rate_limited
 ├── Busy                        503     busy
 ├── NotReady                    503     not_ready      (also: the database cannot be reached)
 ├── Internal                    500     internal
 ├── ProviderError               502     provider_error   (a reply's model server failed)
 ├── ReplyTimeout                504     timeout          (a reply took longer than AI_TIMEOUT_S)
 └── Interrupted                 503     interrupted      (a reply ended by shutdown or a crash)

Domain code raises these; `api` renders them as JSON bodies, `ws` as `error` frames.
"""

from __future__ import annotations

from sqlalchemy.exc import InterfaceError, OperationalError


class ImsvcError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code.replace("_", " "))
        self.message = message or self.code.replace("_", " ")


class BadRequest(ImsvcError):
    status = 400
    code = "bad_request"


class InvalidJson(BadRequest):
    code = "invalid_json"


class UnknownType(BadRequest):
    code = "unknown_type"


class Unauthorized(ImsvcError):
    status = 401
    code = "unauthorized"


class Forbidden(ImsvcError):
    status = 403
    code = "forbidden"


class NotFound(ImsvcError):
    status = 404
    code = "not_found"


class Conflict(ImsvcError):
    status = 409
    code = "conflict"


class PayloadTooLarge(ImsvcError):
    status = 413
    code = "payload_too_large"


class ValidationFailed(ImsvcError):
    status = 422
    code = "validation_error"


class RateLimited(ImsvcError):
    status = 429
    code = "rate_limited"

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many messages, retry in {retry_after} s")
        self.retry_after = retry_after


class Busy(ImsvcError):
    status = 503
    code = "busy"


class NotReady(ImsvcError):
    status = 503
    code = "not_ready"


class Internal(ImsvcError):
    status = 500
    code = "internal"


class ProviderError(ImsvcError):
    status = 502
    code = "provider_error"


class ReplyTimeout(ImsvcError):
    status = 504
    code = "timeout"


class Interrupted(ImsvcError):
    status = 503
    code = "interrupted"


def translate(exc: Exception) -> ImsvcError:
    """Any exception as the error a client sees: ours as they are, an unreachable database as not_ready."""
    if isinstance(exc, ImsvcError):
        return exc
    if isinstance(exc, OperationalError | InterfaceError | OSError):
        return NotReady("the database is not available")
    return Internal("internal error")

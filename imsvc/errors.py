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

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout


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


# SQLSTATEs of a connection that is lost or refused: class 08 (connection exception), and the server
# shutting down or not taking connections yet (57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now).
CONNECTION_LOST_STATES = ("08", "57P01", "57P02", "57P03")


def connection_lost(exc: BaseException) -> bool:
    """Whether `exc` says the database went away, rather than that a statement was wrong.

    SQLAlchemy wraps the driver's error (`orig`) in its own; asyncpg's, adapted once more, keep their
    SQLSTATE as `sqlstate`, and SQLAlchemy marks an error that cost its connection `connection_invalidated`.
    """
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    found: BaseException | None = exc
    for _ in range(4):  # SQLAlchemy's error, the DBAPI adapter's, the driver's, and its cause
        if found is None:
            break
        if isinstance(found, OSError):  # ConnectionResetError and the like, raised by the driver itself
            return True
        state = getattr(found, "sqlstate", None) or getattr(found, "pgcode", None)
        if isinstance(state, str) and state.startswith(CONNECTION_LOST_STATES):
            return True
        found = getattr(found, "orig", None) or found.__cause__
    return False


def translate(exc: Exception) -> ImsvcError:
    """Any exception as the error a client sees: ours as they are, an unreachable or lost database as
    not_ready, anything else (a bug) as internal."""
    if isinstance(exc, ImsvcError):
        return exc
    if isinstance(exc, PoolTimeout):  # every pooled connection is in use
        return Busy("the database is busy")
    if isinstance(exc, OperationalError | InterfaceError | OSError) or connection_lost(exc):
        return NotReady("the database is not available")
    return Internal("internal error")

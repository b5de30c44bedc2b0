"""errors.translate: a lost database is not_ready, a bug stays internal, whatever wraps the driver's error."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi
from sqlalchemy.exc import DBAPIError, IntegrityError, InternalError, ProgrammingError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from imsvc.errors import Busy, Forbidden, Internal, NotReady, translate

DBAPI = AsyncAdapt_asyncpg_dbapi(asyncpg)


def as_sqlalchemy(driver_error: Exception, wrapper: type[DBAPIError] = DBAPIError, **kw: bool) -> DBAPIError:
    """The driver's error as it reaches our code: adapted to the DBAPI, then wrapped by SQLAlchemy."""
    adapted = DBAPI.Error(str(driver_error), driver_error)
    return wrapper("SELECT 1", None, adapted, **kw)


@pytest.mark.parametrize(
    "driver_error",
    [
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.exceptions.CrashShutdownError("the database system is in recovery mode"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.ConnectionFailureError("connection failure"),
        asyncpg.exceptions.ProtocolViolationError("protocol violation"),
        ConnectionResetError("connection lost"),
    ],
)
@pytest.mark.parametrize("wrapper", [DBAPIError, InternalError])
def test_a_lost_connection_is_not_ready(driver_error: Exception, wrapper: type[DBAPIError]) -> None:
    assert isinstance(translate(as_sqlalchemy(driver_error, wrapper)), NotReady)


def test_an_invalidated_connection_is_not_ready() -> None:
    error = as_sqlalchemy(asyncpg.exceptions.InternalClientError("cannot switch"), InternalError)
    assert isinstance(translate(error), Internal)
    error = as_sqlalchemy(asyncpg.exceptions.InternalClientError("cannot switch"), connection_invalidated=True)
    assert isinstance(translate(error), NotReady)


@pytest.mark.parametrize(
    ("driver_error", "wrapper"),
    [
        (asyncpg.exceptions.UndefinedTableError('relation "nope" does not exist'), ProgrammingError),
        (asyncpg.exceptions.UniqueViolationError("duplicate key"), IntegrityError),
        (asyncpg.exceptions.CharacterNotInRepertoireError("invalid byte sequence"), DBAPIError),
        (asyncpg.exceptions.InternalClientError("a bug"), InternalError),
    ],
)
def test_a_real_error_stays_internal(driver_error: Exception, wrapper: type[DBAPIError]) -> None:
    assert isinstance(translate(as_sqlalchemy(driver_error, wrapper)), Internal)
    assert isinstance(translate(ValueError("a bug")), Internal)


def test_our_errors_pass_through_and_an_exhausted_pool_is_busy() -> None:
    forbidden = Forbidden("no")
    assert translate(forbidden) is forbidden
    assert isinstance(translate(PoolTimeout("QueuePool limit reached")), Busy)

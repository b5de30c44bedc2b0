"""Access tokens: HS256 JWTs whose `sub` is the user id."""

from __future__ import annotations

import functools
import re
import time
import warnings

import jwt
from jwt.warnings import InsecureKeyLengthWarning

from imsvc.errors import Unauthorized
from imsvc.schemas import ID_PATTERN

USER_ID = re.compile(ID_PATTERN)
DEFAULT_TTL_S = 24 * 3600


def mint_token(secret: str, user_id: str, ttl_s: int = DEFAULT_TTL_S) -> str:
    if not USER_ID.fullmatch(user_id):
        raise ValueError("user id must be 1-48 characters of A-Za-z0-9_.:@-")
    now = int(time.time())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)  # the operator was told once, at start-up
        return jwt.encode({"sub": user_id, "iat": now, "exp": now + ttl_s}, secret, algorithm="HS256")


def verify_token(secret: str, token: str | None, bot_user_id: str) -> str:
    """The token's user id; Unauthorized if it is missing, badly signed, expired or names no valid user.

    Nobody signs in as the assistant: its messages are the model's side of every conversation.
    """
    if not token:
        raise Unauthorized("missing access token")
    sub, expires = _checked(secret, token)
    if expires is not None and expires <= time.time():  # as PyJWT decides it
        raise Unauthorized("access token expired")
    if sub == bot_user_id:
        raise Unauthorized("the assistant's user id cannot sign in")
    return sub


@functools.lru_cache(maxsize=4096)
def _checked(secret: str, token: str) -> tuple[str, int | None]:
    """The subject and expiry of a token whose signature and claims check out. Remembered: a client sends
    the same token with every request, and decoding it cost about 50 µs, a twentieth of a history page's
    CPU. Of what PyJWT checks, only the expiry can turn false with time (nbf and iat only become true), so
    the caller checks it on every use. Refusals raise, and are not remembered."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsecureKeyLengthWarning)
            claims = jwt.decode(token, secret, algorithms=["HS256"], options={"require": ["sub"]})
    except jwt.ExpiredSignatureError:
        raise Unauthorized("access token expired") from None
    except jwt.InvalidTokenError:
        raise Unauthorized("invalid access token") from None
    sub = claims["sub"]
    if not isinstance(sub, str) or not USER_ID.fullmatch(sub):  # `$` alone lets "alice\n" through
        raise Unauthorized("token subject is not a valid user id")
    return sub, int(claims["exp"]) if "exp" in claims else None


def bearer(authorization: str | None) -> str | None:
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return None

"""Upgrade tokens: HS256 JWTs (PyJWT) binding a subject, the keys it may use and an expiry.

Claims: ``sub`` (required), ``exp`` (required), ``keys``: a list of allowed
routing keys, where ``"room:*"`` allows any key starting with ``room:`` and
``"*"`` allows all.
"""

from __future__ import annotations

import time
from typing import Any

import jwt

from gateway.handshake import HandshakeError

__all__ = [
    "TokenVerifier",
    "key_allowed",
    "make_token",
]


class TokenVerifier:
    def __init__(self, secret: str, *, leeway_s: float = 0.0):
        if len(secret) < 16:
            raise ValueError("jwt_secret must be at least 16 characters")
        self._secret = secret
        self._leeway = leeway_s

    def verify(self, token: str | None, key: str) -> str:
        """The token's subject, or HandshakeError 401 (bad token) / 403 (key not allowed)."""
        if not token:
            raise HandshakeError(401, "token required", (("WWW-Authenticate", "Bearer"),))
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                leeway=self._leeway,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise HandshakeError(401, "token expired", (("WWW-Authenticate", "Bearer"),)) from None
        except jwt.InvalidTokenError:
            raise HandshakeError(401, "invalid token", (("WWW-Authenticate", "Bearer"),)) from None
        if not key_allowed(claims.get("keys"), key):
            raise HandshakeError(403, "token does not allow this key")
        return str(claims["sub"])


def key_allowed(patterns: Any, key: str) -> bool:
    if not isinstance(patterns, list):
        return False
    for p in patterns:
        if not isinstance(p, str):
            continue
        if p == key or (p.endswith("*") and key.startswith(p[:-1])):
            return True
    return False


def make_token(secret: str, sub: str, keys: list[str], ttl_s: float = 3600) -> str:
    """Issue a token (for tests, tools and the loadtest)."""
    return jwt.encode(
        {"sub": sub, "keys": keys, "exp": int(time.time() + ttl_s)}, secret, algorithm="HS256"
    )

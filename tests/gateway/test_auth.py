"""Token checks: expiry without leeway by default, leeway only when configured."""

from __future__ import annotations

import time

import jwt
import pytest

from gateway.auth import TokenVerifier, make_token
from gateway.handshake import HandshakeError

pytestmark = pytest.mark.timeout(10)

SECRET = "s" * 32


def expired(seconds_ago: float) -> str:
    claims = {"sub": "a", "keys": ["*"], "exp": int(time.time() - seconds_ago)}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def test_expired_token_is_refused_without_leeway():
    with pytest.raises(HandshakeError) as exc:
        TokenVerifier(SECRET).verify(expired(2), "k")
    assert exc.value.status == 401 and exc.value.reason == "token expired"


def test_leeway_is_what_is_configured():
    assert TokenVerifier(SECRET, leeway_s=30).verify(expired(2), "k") == "a"
    with pytest.raises(HandshakeError):
        TokenVerifier(SECRET, leeway_s=30).verify(expired(60), "k")


def test_valid_token_and_key_scope():
    v = TokenVerifier(SECRET)
    assert v.verify(make_token(SECRET, "bob", ["room:*"]), "room:9") == "bob"
    with pytest.raises(HandshakeError) as exc:
        v.verify(make_token(SECRET, "bob", ["room:*"]), "doc:1")
    assert exc.value.status == 403

"""Node credentials and the gateway's signed route claims. Pure.

Each backend has a credential of its own, derived from the cluster secret that
only the gateways (the control plane) hold:
``credential = HMAC-SHA256(cluster_secret, "anchorage-node\\0" + node_id)``.
A backend given node-1's credential can authenticate as node-1 and nobody
else; the gateways can compute every node's credential without a database.

A gateway that forwards an upgrade to a backend vouches for the route with a
**claim**: the key, its slot, the epoch and the node it routed to, the time,
and a nonce, signed with that node's credential (``X-Route-Proof``). The
backend recomputes the signature with its own credential: only a gateway can
assert an epoch, and a claim made for one node is worthless at another.

A claim is valid for ``window_ms`` around its time (clocks of gateway and
backend hosts may differ a little). A replay inside that window gains nothing
a valid route does not already give: it reaches the node the gateway chose, for
the key it chose, and the node still checks the epoch against its own table and
the store.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, unquote

__all__ = [
    "CLAIM_WINDOW_MS",
    "RouteClaim",
    "node_credential",
    "quote_key",
    "sign_claim",
    "unquote_key",
    "verify_claim",
]

CLAIM_WINDOW_MS: Final = 30_000
_MAX_PROOF_LEN: Final = 200


def node_credential(cluster_secret: str, node_id: str) -> str:
    """The credential of ``node_id`` (URL-safe base64, 43 characters)."""
    mac = hmac.new(cluster_secret.encode(), b"anchorage-node\0" + node_id.encode(), "sha256")
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()


def quote_key(key: str) -> str:
    """A routing key as an ASCII header value (percent-encoded UTF-8)."""
    return quote(key, safe="")


def unquote_key(value: str) -> str:
    """Inverse of :func:`quote_key` (ValueError for what is not valid UTF-8)."""
    return unquote(value, errors="strict")


@dataclass(frozen=True, slots=True)
class RouteClaim:
    """What a gateway asserts about an upgrade it forwards."""

    key: str
    slot: int
    epoch: int
    node: str
    issued_ms: int  # wall-clock milliseconds
    nonce: str

    def message(self) -> bytes:
        return (
            f"anchorage-route\n{quote_key(self.key)}\n{self.slot}\n{self.epoch}\n"
            f"{self.node}\n{self.issued_ms}\n{self.nonce}"
        ).encode()


def sign_claim(credential: str, claim: RouteClaim) -> str:
    """The ``X-Route-Proof`` header value: ``<issued_ms>.<nonce>.<signature>``."""
    sig = hmac.new(credential.encode(), claim.message(), hashlib.sha256).hexdigest()
    return f"{claim.issued_ms}.{claim.nonce}.{sig}"


def verify_claim(
    credential: str,
    *,
    key: str,
    slot: int,
    epoch: int,
    node: str,
    proof: str,
    now_ms: int,
    window_ms: int = CLAIM_WINDOW_MS,
) -> RouteClaim | None:
    """The claim if ``proof`` signs exactly these values for this node, recently; else None."""
    if len(proof) > _MAX_PROOF_LEN:
        return None
    parts = proof.split(".")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isalnum():
        return None
    claim = RouteClaim(key, slot, epoch, node, int(parts[0]), parts[1])
    if abs(now_ms - claim.issued_ms) > window_ms:
        return None
    want = hmac.new(credential.encode(), claim.message(), hashlib.sha256).hexdigest()
    return claim if hmac.compare_digest(want, parts[2]) else None

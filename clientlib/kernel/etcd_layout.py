"""Where the control plane keeps things in etcd: one definition for gateways and backends.

Every value is a control message in the kernel's codec
(:mod:`clientlib.kernel.control_protocol`), decoded and checked where it is
read, except the directory (the control core's snapshot) and the leader key.

=================================  ==========================================  =============
key                                value                                       lease
=================================  ==========================================  =============
``P/leader``                       the leading gateway: ``{"id", "admin"}``    the leader's
``P/directory``                    snapshot: epoch counter, table, nodes,      none (written
                                   moves in flight                             by CAS)
``P/nodes/<node>``                 ``register`` (incarnation, addr, …)         the node's
``P/load/<node>``                  ``report`` (load, table version)            the node's
``P/orders/<node>/release-<move>`` ``release``, from the plane                 none
``P/orders/<node>/left``           ``left``: the plane reassigned everything   none
``P/orders/<node>/refused``        ``refused``: the plane will not take it     none
``P/answers/<node>/released-<m>``  ``released``, from the node                 the node's
``P/answers/<node>/leave``         ``leave``, from the node                    the node's
=================================  ==========================================  =============
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Layout"]


@dataclass(frozen=True, slots=True)
class Layout:
    prefix: str = "/anchorage"

    def __post_init__(self) -> None:
        if not self.prefix.startswith("/") or self.prefix.endswith("/"):
            raise ValueError("etcd prefix must start with / and not end with /")

    @property
    def root(self) -> str:
        return self.prefix + "/"

    @property
    def leader(self) -> str:
        return f"{self.prefix}/leader"

    @property
    def directory(self) -> str:
        return f"{self.prefix}/directory"

    def node(self, node: str) -> str:
        return f"{self.prefix}/nodes/{node}"

    def load(self, node: str) -> str:
        return f"{self.prefix}/load/{node}"

    def orders(self, node: str) -> str:
        return f"{self.prefix}/orders/{node}/"

    def release(self, node: str, move: int) -> str:
        return f"{self.prefix}/orders/{node}/release-{move}"

    def left(self, node: str) -> str:
        return f"{self.prefix}/orders/{node}/left"

    def refused(self, node: str) -> str:
        return f"{self.prefix}/orders/{node}/refused"

    def answers(self, node: str) -> str:
        return f"{self.prefix}/answers/{node}/"

    def released(self, node: str, move: int) -> str:
        return f"{self.prefix}/answers/{node}/released-{move}"

    def leave(self, node: str) -> str:
        return f"{self.prefix}/answers/{node}/leave"

    def parse(self, key: str) -> tuple[str, str, str]:
        """(kind, node, name) of a key under the prefix: ``("nodes", "n1", "")``,
        ``("answers", "n1", "leave")``, ``("leader", "", "")``; kind "" if unknown."""
        if not key.startswith(self.root):
            return "", "", ""
        parts = key[len(self.root) :].split("/")
        if len(parts) == 1 and parts[0] in ("leader", "directory"):
            return parts[0], "", ""
        if len(parts) == 2 and parts[0] in ("nodes", "load") and parts[1]:
            return parts[0], parts[1], ""
        if len(parts) == 3 and parts[0] in ("orders", "answers") and parts[1] and parts[2]:
            return parts[0], parts[1], parts[2]
        return "", "", ""

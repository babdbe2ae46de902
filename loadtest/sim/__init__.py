"""A deterministic simulator of the whole system, seeded (``python -m loadtest simulate``).

The real sans-I/O cores (node, session connection, control agent, control
core and directory, client session) run over a simulated network and clock;
faults are injected; invariants are checked after every step. See
``docs/reliability.md``.
"""

from loadtest.sim.world import HEAL_BOUND_S, Result, simulate

__all__ = ["HEAL_BOUND_S", "Result", "simulate"]

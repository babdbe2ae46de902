"""The protocol kernel: everything that crosses a process boundary, shared by all programs.

The gateway, the backend framework, the client library and the loadtest are
peers; none imports another (``gateway``, ``backend`` and ``clientlib.client``
are independent layers, checked by the import-linter contract in
``pyproject.toml``). What they must agree on lives here, once:

* :mod:`.session_protocol`: session envelopes (client ↔ backend), their codec,
  close codes and hints;
* :mod:`.replay`: sequence numbers, cumulative acks, replay and duplicate drop
  (``Outbox`` / ``Inbox``), the same on both ends of a session;
* :mod:`.control_protocol`: the typed control-plane messages (backend ↔
  control plane) and their codec;
* :mod:`.routing`: key → slot → node (``slot_of``, ``SlotTable``, rendezvous);
* :mod:`.backoff`: when to reconnect, honouring server hints;
* :mod:`.settings` and :mod:`.logsetup`: how every program reads its
  configuration and sets up its logs.

Everything here is sans-I/O: no asyncio, no sockets; values in, values out,
the clock and randomness passed in. Malformed input from a peer is always
reported as :class:`~.session_protocol.ProtocolError`, at the boundary.
"""

/**
 * The client library's errors. Applications catch these, never a WebSocket's own.
 *
 *     ClientError
 *     ├── ClientClosed          the app closed the client (or it ended); no more sends
 *     ├── TerminalClose         the server said stop (4500-4999, 1000, 1002, 1008…); not retried
 *     │   └── Unauthorized      4500 / HTTP 401: bad or expired token
 *     ├── HandshakeRefused      the upgrade got a final HTTP error (400, 403, 404, 405, 426)
 *     ├── SendBufferFull        send() with onFull "throw" while the bounded buffer is full
 *     ├── StartTimeout          the first session did not come up within startTimeout
 *     ├── GaveUp                no session for giveUpAfter ms while reconnecting
 *     └── ServerProtocolError   the server broke the session protocol
 *
 * The same tree as the Python client's `clientlib/errors.py`, plus GaveUp.
 */

export class ClientError extends Error {
  override name = "ClientError";
}

export class ClientClosed extends ClientError {
  override name = "ClientClosed";
}

export class TerminalClose extends ClientError {
  override name = "TerminalClose";
  constructor(
    readonly code: number,
    readonly reason = "",
  ) {
    super(`server closed the session with code ${code} ${reason}`.trim());
  }
}

export class Unauthorized extends TerminalClose {
  override name = "Unauthorized";
}

export class HandshakeRefused extends ClientError {
  override name = "HandshakeRefused";
  constructor(
    readonly status: number,
    body = "",
  ) {
    super(body ? `upgrade refused with HTTP ${status}: ${body}` : `upgrade refused with HTTP ${status}`);
  }
}

export class SendBufferFull extends ClientError {
  override name = "SendBufferFull";
}

export class StartTimeout extends ClientError {
  override name = "StartTimeout";
}

export class GaveUp extends ClientError {
  override name = "GaveUp";
}

export class ServerProtocolError extends ClientError {
  override name = "ServerProtocolError";
}

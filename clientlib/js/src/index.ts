/** anchorage client: resumable WebSocket sessions to an anchorage gateway, for browsers and Node. */

export { Client } from "./client.js";
export type { ClientEvent, ClientOptions, ClientState, ClientStats, EventKind } from "./client.js";
export {
  ClientClosed,
  ClientError,
  GaveUp,
  HandshakeRefused,
  SendBufferFull,
  ServerProtocolError,
  StartTimeout,
  TerminalClose,
  Unauthorized,
} from "./errors.js";
export { type BackoffPolicy, DEFAULT_BACKOFF, reconnectDelay } from "./backoff.js";
export { CloseCode, closeAction, type Action, type CloseHint } from "./protocol.js";
export type { WebSocketClass } from "./socket.js";

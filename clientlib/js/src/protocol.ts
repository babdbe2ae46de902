/**
 * The session wire protocol: envelopes, codec and close codes. Sans-I/O.
 *
 * The same rules as `clientlib/protocol.py` and `docs/protocol.md`. Nothing here
 * touches a socket or a timer: strings in, values out. A peer's malformed input is
 * always reported as {@link ProtocolError}, never as another exception.
 */

/** Largest sequence number: JSON integers beyond 2^53 lose precision. */
export const MAX_SEQ = Number.MAX_SAFE_INTEGER;
/** Session ids are opaque printable strings of bounded length. */
export const MAX_SID_LEN = 64;
/** Routing keys: 1–256 printable characters. */
export const MAX_KEY_LEN = 256;
/** Close hints outside 1 ms – 1 h are ignored: a server must not make a client sleep for a year. */
export const MAX_HINT_MS = 3_600_000;

/** The peer sent something that is not a valid envelope, or broke the session rules. */
export class ProtocolError extends Error {
  override name = "ProtocolError";
}

// ------------------------------------------------------------------ close codes

/** What a client must do when a connection closes with a given code. */
export type Action = "stop" | "reconnect" | "reconnect_window" | "retry_after";

export const CloseCode = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  UNSUPPORTED_DATA: 1003,
  ABNORMAL: 1006,
  INVALID_DATA: 1007,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  SERVICE_RESTART: 1012,
  TRY_AGAIN_LATER: 1013,
  MOVED: 4000,
  SLOW_CONSUMER: 4001,
  SEND_QUEUE_FULL: 4002,
  NOT_OWNER: 4003,
  IDLE_TIMEOUT: 4004,
  UNAUTHORIZED: 4500,
  FORBIDDEN_KEY: 4501,
  SESSION_PROTOCOL_VIOLATION: 4502,
  SESSION_CONFLICT: 4503,
} as const;

/** The close-code table of docs/protocol.md. */
export const CLOSE_ACTIONS: Readonly<Record<number, Action>> = {
  1000: "stop",
  1001: "reconnect_window",
  1002: "stop",
  1003: "stop",
  1006: "reconnect",
  1007: "stop",
  1008: "stop",
  1009: "stop",
  1011: "reconnect",
  1012: "reconnect_window",
  1013: "retry_after",
  4000: "reconnect_window",
  4001: "reconnect",
  4002: "reconnect",
  4003: "reconnect",
  4004: "reconnect",
  4500: "stop",
  4501: "stop",
  4502: "stop",
  4503: "stop",
};

/**
 * Map any close code (known or not) to an action. Unknown codes follow their
 * range: 4000–4499 reconnect, 4500–4999 stop; anything else (including no close
 * frame at all, which browsers report as 1006 and Node's `ws` as 1005/1006)
 * reconnects with backoff.
 */
export function closeAction(code: number | null | undefined): Action {
  if (code == null) return "reconnect";
  const known = CLOSE_ACTIONS[code];
  if (known !== undefined) return known;
  if (code >= 4500 && code <= 4999) return "stop";
  return "reconnect";
}

/** The JSON hint a close reason may carry: `{"after_ms":…}` or `{"window_ms":…}`. */
export interface CloseHint {
  afterMs?: number;
  windowMs?: number;
}

/** Parse a close reason; anything that is not a well-formed hint yields an empty hint. */
export function decodeHint(reason: string): CloseHint {
  if (!reason.startsWith("{")) return {};
  let obj: unknown;
  try {
    obj = JSON.parse(reason);
  } catch {
    return {};
  }
  if (!isObject(obj)) return {};
  const hint: CloseHint = {};
  const after = hintMs(obj["after_ms"]);
  const window = hintMs(obj["window_ms"]);
  if (after !== undefined) hint.afterMs = after;
  if (window !== undefined) hint.windowMs = window;
  return hint;
}

function hintMs(v: unknown): number | undefined {
  return typeof v === "number" && Number.isInteger(v) && v >= 1 && v <= MAX_HINT_MS
    ? v
    : undefined;
}

/** HTTP refusals of the upgrade that mean "fix the request", never retried. */
const FINAL_STATUSES = new Set([400, 401, 403, 404, 405, 426]);

/**
 * What to do about an upgrade refused with an HTTP status (the table in
 * docs/protocol.md §1). 429 and 503 honour `Retry-After` (whole seconds; absent or
 * out of bounds: normal backoff). Browsers never expose the status: a refusal
 * there looks like a dropped connection (1006) and is retried with backoff.
 */
export function refusalAction(status: number, retryAfter: string | null | undefined): {
  action: Action;
  hint: CloseHint;
} {
  if (status === 429 || status === 503) {
    const text = (retryAfter ?? "").trim();
    const after = /^\d{1,7}$/.test(text) ? hintMs(Number(text) * 1000) : undefined;
    return { action: "retry_after", hint: after === undefined ? {} : { afterMs: after } };
  }
  if (FINAL_STATUSES.has(status)) return { action: "stop", hint: {} };
  return { action: "reconnect", hint: {} };
}

// ------------------------------------------------------------------ envelopes

export interface Hello {
  t: "hello";
  sid: string | null;
  /** Highest server seq received (0: none). */
  last: number;
  /** Highest own seq the server has acknowledged (0: none); servers that predate it ignore it. */
  ack: number;
}
export interface Welcome {
  t: "welcome";
  sid: string;
  resumed: boolean;
  /** Highest client seq the server has processed. */
  last: number;
}
export interface Msg {
  t: "msg";
  seq: number;
  ack: number;
  d: unknown;
}
export interface Ack {
  t: "ack";
  ack: number;
}
export type Envelope = Hello | Welcome | Msg | Ack;

export function encodeHello(sid: string | null, last: number, ack: number): string {
  return JSON.stringify({ t: "hello", sid, last, ack });
}

export function encodeAck(ack: number): string {
  return `{"t":"ack","ack":${ack}}`;
}

/** A msg envelope around data that is already JSON: data is encoded once, on send. */
export function encodeMsgRaw(seq: number, ack: number, dataJson: string): string {
  return `{"t":"msg","seq":${seq},"ack":${ack},"d":${dataJson}}`;
}

/**
 * JSON-encode application data. Throws TypeError for what JSON cannot carry
 * (undefined, functions, symbols, BigInt, cycles) rather than sending `null` or nothing.
 */
export function encodeData(data: unknown): string {
  let json: string | undefined;
  try {
    json = JSON.stringify(data);
  } catch (e) {
    throw new TypeError(`message is not JSON-serialisable: ${(e as Error).message}`);
  }
  if (json === undefined) throw new TypeError("message is not JSON-serialisable");
  return json;
}

/** Parse one envelope (text, or the UTF-8 bytes of a binary frame). Invalid input throws ProtocolError. */
export function decode(raw: string): Envelope {
  let obj: unknown;
  try {
    obj = JSON.parse(raw);
  } catch {
    throw new ProtocolError("envelope is not valid JSON");
  }
  if (!isObject(obj)) throw new ProtocolError("envelope is not a JSON object");
  switch (obj["t"]) {
    case "msg":
      if (!("d" in obj)) throw new ProtocolError("msg without d");
      return { t: "msg", seq: seqField(obj, "seq", 1), ack: seqField(obj, "ack", 0), d: obj["d"] };
    case "ack":
      return { t: "ack", ack: seqField(obj, "ack", 0) };
    case "welcome": {
      const resumed = obj["resumed"];
      if (typeof resumed !== "boolean") throw new ProtocolError("welcome.resumed must be a boolean");
      const sid = obj["sid"];
      if (!isSid(sid)) {
        throw new ProtocolError(`sid must be a printable string of 1..${MAX_SID_LEN} characters`);
      }
      return { t: "welcome", sid, resumed, last: seqField(obj, "last", 0) };
    }
    case "hello": {
      const sid = obj["sid"];
      if (sid !== null && !isSid(sid)) throw new ProtocolError("hello.sid must be null or a sid");
      // `ack` is optional on the wire: peers that predate it do not send it.
      const ack = "ack" in obj ? seqField(obj, "ack", 0) : 0;
      return { t: "hello", sid, last: seqField(obj, "last", 0), ack };
    }
    default:
      throw new ProtocolError(`unknown envelope type ${JSON.stringify(obj["t"])?.slice(0, 32)}`);
  }
}

function seqField(obj: Record<string, unknown>, name: string, min: number): number {
  const v = obj[name];
  // Number.isSafeInteger refuses 1.5, 2^53 and beyond, NaN, and non-numbers (true, "1").
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min) {
    throw new ProtocolError(`${name} must be an integer in [${min}, 2^53-1]`);
  }
  return v;
}

// Printable as Python's str.isprintable(): no control, format, surrogate, private-use,
// unassigned or separator characters except the ASCII space.
const NOT_PRINTABLE = /[\p{C}\p{Zl}\p{Zp}\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]/u;

export function isPrintable(s: string): boolean {
  return !NOT_PRINTABLE.test(s);
}

function isSid(v: unknown): v is string {
  return typeof v === "string" && v.length > 0 && v.length <= MAX_SID_LEN && isPrintable(v);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/**
 * One WebSocket connection behind a small uniform interface, for browsers' WebSocket
 * and Node's `ws` package alike.
 *
 * What differs, and why it matters to the client:
 * - the token: browsers cannot set headers on an upgrade, so it goes in `?token=`;
 *   with `ws` it goes in `Authorization: Bearer` (kept out of URLs and access logs);
 * - refusals: browsers hide the HTTP status of a refused upgrade (it looks like a
 *   dropped connection); `ws` reports it, so 401/403 stop and 503 honours Retry-After;
 * - liveness: only `ws` can send pings and see pongs and the server's pings.
 */

/** The part of the WebSocket API the client uses (browsers, `ws`, undici). */
export interface WebSocketLike {
  readonly readyState: number;
  binaryType: string;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** Extras of Node's `ws` package. */
interface NodeWs extends WebSocketLike {
  on(event: string, fn: (...args: any[]) => void): unknown;
  ping(): void;
  terminate(): void;
}

/** A WebSocket class: the browser's, `ws`'s default export, or any compatible one. */
export type WebSocketClass = new (url: string, ...rest: any[]) => any;

export interface Refusal {
  status: number;
  retryAfter: string | null;
  body: string;
}

export interface ConnHandlers {
  open(): void;
  text(raw: string): void;
  /** Any frame or control frame arrived (liveness). */
  alive(): void;
  /** The connection is gone; `refusal` when the upgrade was answered with an HTTP error. */
  closed(code: number | null, reason: string, refusal: Refusal | null): void;
}

const decoder = new TextDecoder("utf-8", { fatal: true });

/** Resolve which WebSocket class to use: given, else `ws` under Node, else the global one. */
export async function resolveWebSocket(given?: WebSocketClass): Promise<WebSocketClass> {
  if (given) return given;
  const proc = (globalThis as { process?: { versions?: { node?: string } } }).process;
  if (proc?.versions?.node) {
    // A variable specifier keeps bundlers from pulling `ws` into the browser bundle.
    const name = "ws";
    try {
      const mod = (await import(name)) as { default?: WebSocketClass; WebSocket?: WebSocketClass };
      const cls = mod.default ?? mod.WebSocket;
      if (cls) return cls;
    } catch {
      // not installed: fall back to Node's own WebSocket where it has one (22+)
    }
  }
  const global = (globalThis as { WebSocket?: WebSocketClass }).WebSocket;
  if (global) return global;
  throw new Error("no WebSocket implementation: install the ws package or pass options.WebSocket");
}

export function isNodeWs(cls: WebSocketClass): boolean {
  const proto = cls.prototype as Partial<NodeWs> | undefined;
  return typeof proto?.ping === "function" && typeof proto?.on === "function";
}

/**
 * One connection attempt. Handlers fire at most once for `closed`, never after
 * {@link Conn.abandon}.
 */
export class Conn {
  private ws: WebSocketLike;
  private done = false;
  private refusal: Refusal | null = null;
  readonly canPing: boolean;

  constructor(
    cls: WebSocketClass,
    url: string,
    token: string | undefined,
    maxMessage: number,
    private readonly h: ConnHandlers,
  ) {
    const node = isNodeWs(cls);
    this.canPing = node;
    if (node) {
      const headers: Record<string, string> = token ? { Authorization: `Bearer ${token}` } : {};
      this.ws = new cls(url, [], { headers, maxPayload: maxMessage }) as WebSocketLike;
      const nws = this.ws as NodeWs;
      nws.on("unexpected-response", (_req: unknown, res: IncomingResponse) => this.refused(res));
      nws.on("ping", () => this.h.alive());
      nws.on("pong", () => this.h.alive());
    } else {
      const u = token ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : url;
      this.ws = new cls(u) as WebSocketLike;
    }
    this.ws.binaryType = "arraybuffer";
    this.ws.onopen = () => {
      if (!this.done) this.h.open();
    };
    this.ws.onmessage = (ev) => {
      if (this.done) return;
      const raw = asText(ev.data);
      // A binary frame that is not UTF-8 cannot be an envelope: the session core refuses it.
      this.h.text(raw ?? "\u0000");
    };
    this.ws.onerror = () => {
      // Always followed by a close event, which carries what the client needs.
    };
    this.ws.onclose = (ev) => {
      if (this.done) return;
      this.done = true;
      // 1005 (no status in the close frame) and 1006 (no close frame) both mean:
      // the peer gave no instruction.
      const code = ev.code === 1005 || ev.code === 1006 ? null : ev.code;
      this.h.closed(code, code === null ? "" : ev.reason, this.refusal);
    };
  }

  send(frame: string): void {
    if (!this.done) this.ws.send(frame);
  }

  /** A WebSocket ping (Node `ws` only; browsers cannot send one). */
  ping(): void {
    if (this.done || !this.canPing) return;
    try {
      (this.ws as NodeWs).ping();
    } catch {
      // closing already (ws throws unless OPEN): the close event follows
    }
  }

  /** Close with a code; the `closed` handler still fires when the peer answers. */
  close(code: number, reason = ""): void {
    try {
      this.ws.close(code, reason);
    } catch {
      // already closed, or an implementation that refuses the code: abandon instead
      this.abandon(code);
    }
  }

  /**
   * Forget this connection now (a dead or stale one): handlers never fire again.
   * The close handshake is attempted but not awaited: a dead peer would never answer.
   */
  abandon(code: number): void {
    if (this.done) return;
    this.done = true;
    try {
      if (this.canPing && this.ws.readyState === 0) (this.ws as NodeWs).terminate();
      else this.ws.close(code);
    } catch {
      // nothing more to do for a socket that is already gone
    }
    if (this.canPing) {
      // ws waits up to 30 s for the peer's close frame; a dead peer never sends it.
      const nws = this.ws as NodeWs;
      const t = setTimeout(() => nws.terminate(), 1000) as { unref?: () => void };
      t.unref?.();
    }
  }

  private refused(res: IncomingResponse): void {
    const retry = res.headers["retry-after"];
    this.refusal = {
      status: res.statusCode ?? 0,
      retryAfter: typeof retry === "string" ? retry : null,
      body: "",
    };
    const chunks: string[] = [];
    let size = 0;
    const finish = (): void => {
      if (this.refusal) this.refusal.body = chunks.join("").trim().slice(0, 200);
      (this.ws as NodeWs).terminate(); // emits close (1006) with the refusal recorded
    };
    res.setEncoding("utf8");
    res.on("data", (c: string) => {
      if (size < 1024) chunks.push(c);
      size += c.length;
    });
    res.on("end", finish);
    res.on("error", finish);
  }
}

/** The bits of Node's http.IncomingMessage the refusal handler reads. */
interface IncomingResponse {
  statusCode?: number;
  headers: Record<string, string | string[] | undefined>;
  setEncoding(enc: string): void;
  on(event: string, fn: (...args: any[]) => void): unknown;
}

function asText(data: unknown): string | null {
  if (typeof data === "string") return data;
  try {
    if (data instanceof ArrayBuffer) return decoder.decode(new Uint8Array(data));
    if (ArrayBuffer.isView(data)) return decoder.decode(data);
  } catch {
    return null;
  }
  return null;
}

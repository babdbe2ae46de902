/**
 * The client: one logical session to one routing key, kept alive across any number
 * of WebSocket connections.
 *
 * It reconnects on its own (full-jitter backoff, server hints honoured, several
 * gateway URLs rotated), resumes with `hello`, resends what the server has not
 * acknowledged and drops what it already delivered, so the app sees every message
 * once and in order. The protocol decisions live in the sans-I/O modules
 * (protocol, session, backoff); this file owns the socket, the timers and the
 * browser's lifecycle signals.
 */

import { Attempts, type BackoffPolicy, DEFAULT_BACKOFF, checkPolicy } from "./backoff.js";
import {
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
import {
  type Action,
  type CloseHint,
  CloseCode,
  MAX_KEY_LEN,
  ProtocolError,
  closeAction,
  decodeHint,
  encodeData,
  isPrintable,
  refusalAction,
} from "./protocol.js";
import { ClientSession, type Incoming, type WelcomeOutcome, utf8Length } from "./session.js";
import { Conn, type Refusal, type WebSocketClass, resolveWebSocket } from "./socket.js";

export type EventKind = "connected" | "disconnected" | "moved" | "resumed" | "not_resumed" | "stopped";

export interface ClientEvent {
  kind: EventKind;
  /** The close code (`disconnected`, `moved`); null when the connection dropped without one. */
  code: number | null;
  /** The close reason, or why the client gave up on the connection. */
  reason: string;
  /** The gateway URL of the connection concerned. */
  url: string;
  /** `performance.now()` when it happened. */
  at: number;
  /** `stopped`: why (ClientClosed after close()). */
  error?: ClientError;
}

export interface ClientOptions {
  /** Gateway URL(s), ws:// or wss://. With several, the client starts at a random one and moves on after a failure. */
  url: string | readonly string[];
  /** The routing key: 1–256 printable characters. */
  key: string;
  /** Upgrade token: `?token=` in browsers, `Authorization: Bearer` with Node's `ws`. */
  token?: string;
  /** WebSocket class; default: the global one in browsers, `ws` under Node. */
  WebSocket?: WebSocketClass;
  /** Reconnect timing in ms; defaults base 250, cap 30 000, defaultWindow 1000, stableAfter 10 000. */
  backoff?: Partial<BackoffPolicy>;
  /** Per connection attempt: open + welcome (ms). */
  connectTimeout?: number;
  /** For the first session, in start() (ms). */
  startTimeout?: number;
  /**
   * Stop with GaveUp when the next attempt would start more than this long after the
   * session was lost (or start() was called) (ms); default: retry forever.
   */
  giveUpAfter?: number;
  /** Send a keepalive after this long with nothing sent (ms). */
  heartbeatInterval?: number;
  /** Declare the connection dead after this long without an answer that is due (ms). */
  heartbeatTimeout?: number;
  /** The send buffer: messages not yet acknowledged (sent or waiting for a connection). */
  maxPending?: number;
  maxPendingBytes?: number;
  /** When the send buffer is full: send() waits for acks, or throws SendBufferFull. */
  onFull?: "wait" | "throw";
  /** Messages received and unread beyond this are not acknowledged (back-pressure). */
  recvBuffer?: number;
  /** Deliver messages to this callback instead of recv() / for await. */
  onMessage?: (data: unknown) => void;
  /** Acknowledge after this many messages or this many ms, whichever is first. */
  ackEvery?: number;
  ackDelay?: number;
  /** Largest message accepted (Node `ws` only; browsers have their own limit). */
  maxMessage?: number;
  /** Listen to the browser's `online` and `visibilitychange` (default true where they exist). */
  browserEvents?: boolean;
  /** Uniform [0, 1) source for jitter (tests make it deterministic). */
  rand?: () => number;
}

export interface ClientStats {
  sent: number;
  received: number;
  acked: number;
  duplicates: number;
  connects: number;
  reconnects: number;
  resumes: number;
  notResumed: number;
  /** Total time without a session after the first one (ms). */
  disconnectedMs: number;
  /** From losing the last connection to the next welcome (ms). */
  lastResumeMs: number | null;
}

export type ClientState = "idle" | "connecting" | "open" | "waiting" | "stopped";

/** Close code the client uses when it drops a connection it considers dead or stale. */
const ABANDON_CODE = CloseCode.IDLE_TIMEOUT;

const now = (): number => performance.now();

interface QueuedSend {
  json: string;
  size: number;
  resolve: (seq: number) => void;
  reject: (e: ClientError) => void;
}

export class Client {
  readonly key: string;
  readonly urls: readonly string[];
  readonly stats: ClientStats = {
    sent: 0,
    received: 0,
    acked: 0,
    duplicates: 0,
    connects: 0,
    reconnects: 0,
    resumes: 0,
    notResumed: 0,
    disconnectedMs: 0,
    lastResumeMs: null,
  };
  /** The last welcome's outcome: true resumed, false a new session, null before the first. */
  resumed: boolean | null = null;

  private readonly o: Required<Omit<ClientOptions, "token" | "WebSocket" | "giveUpAfter" | "onMessage" | "backoff" | "url">>;
  private readonly token: string | undefined;
  private readonly giveUpAfter: number | undefined;
  private readonly onMessage: ((data: unknown) => void) | undefined;
  private readonly attempts: Attempts;
  private readonly session: ClientSession;
  private wsClass: WebSocketClass | undefined;
  private urlIndex: number;

  private _state: ClientState = "idle";
  private error: ClientError | null = null;
  private conn: Conn | null = null;
  private connUrl = "";
  private upSince = 0;
  /** How long the last connection had a session (ms; 0: never had one). */
  private lived = 0;
  /** Since when no session has been up (for giveUpAfter and the resume time). */
  private downSince: number | null = null;
  private lostAt: number | null = null;

  // liveness
  private lastRx = 0;
  private lastTx = 0;
  private expectSince: number | null = null;
  private pingOutstanding = false;
  private offlineSeen = false;

  // timers
  private connectTimer: ReturnType<typeof setTimeout> | undefined;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private retryAt = 0;
  private retryHinted = false;
  private ackTimer: ReturnType<typeof setTimeout> | undefined;
  private tickTimer: ReturnType<typeof setInterval> | undefined;

  // waiters
  private sendQueue: QueuedSend[] = [];
  private ackWaiters: { seq: number; resolve: () => void; reject: (e: ClientError) => void }[] = [];
  private recvQueue: unknown[] = [];
  private recvWaiters: { resolve: (v: unknown) => void; reject: (e: ClientError) => void }[] = [];
  private startWaiters: { resolve: () => void; reject: (e: ClientError) => void }[] = [];
  private closeWaiters: (() => void)[] = [];
  private listeners = new Map<EventKind | "*", Set<(ev: ClientEvent) => void>>();
  private unhook: (() => void) | null = null;

  constructor(options: ClientOptions) {
    const urls = typeof options.url === "string" ? [options.url] : [...options.url];
    if (urls.length === 0) throw new TypeError("url: at least one gateway URL is needed");
    const key = options.key;
    if (typeof key !== "string" || key.length === 0 || key.length > MAX_KEY_LEN || !isPrintable(key)) {
      throw new TypeError(`key must be 1..${MAX_KEY_LEN} printable characters`);
    }
    this.key = key;
    this.urls = urls.map((u) => withKey(u, key));
    this.token = options.token;
    this.giveUpAfter = options.giveUpAfter;
    this.onMessage = options.onMessage;
    this.wsClass = options.WebSocket;
    this.o = {
      key,
      connectTimeout: options.connectTimeout ?? 10_000,
      startTimeout: options.startTimeout ?? 30_000,
      heartbeatInterval: options.heartbeatInterval ?? 20_000,
      heartbeatTimeout: options.heartbeatTimeout ?? 20_000,
      maxPending: options.maxPending ?? 1024,
      maxPendingBytes: options.maxPendingBytes ?? 1 << 20,
      onFull: options.onFull ?? "wait",
      recvBuffer: options.recvBuffer ?? 1024,
      ackEvery: options.ackEvery ?? 32,
      ackDelay: options.ackDelay ?? 50,
      maxMessage: options.maxMessage ?? 1 << 20,
      browserEvents: options.browserEvents ?? true,
      rand: options.rand ?? Math.random,
    };
    if (this.o.onFull !== "wait" && this.o.onFull !== "throw") {
      throw new TypeError('onFull must be "wait" or "throw"');
    }
    for (const name of ["connectTimeout", "startTimeout", "heartbeatInterval", "heartbeatTimeout", "ackDelay"] as const) {
      if (!(this.o[name] > 0)) throw new RangeError(`${name} must be > 0`);
    }
    for (const name of ["maxPending", "maxPendingBytes", "recvBuffer", "ackEvery", "maxMessage"] as const) {
      if (!Number.isInteger(this.o[name]) || this.o[name] < 1) throw new RangeError(`${name} must be an integer >= 1`);
    }
    const policy = { ...DEFAULT_BACKOFF, ...options.backoff };
    checkPolicy(policy);
    this.attempts = new Attempts(policy);
    this.session = new ClientSession(this.o.maxPending, this.o.maxPendingBytes, this.o.recvBuffer);
    this.urlIndex = Math.floor(this.o.rand() * this.urls.length) % this.urls.length;
  }

  // ------------------------------------------------------------------ public API

  get state(): ClientState {
    return this._state;
  }

  /** The session id, once a server gave one. */
  get sid(): string | null {
    return this.session.sid;
  }

  /** Messages sent by the app and not yet acknowledged by the server. */
  get pending(): number {
    return this.session.outbox.length + this.sendQueue.length;
  }

  /** Subscribe to lifecycle events ("*" for all); returns the unsubscribe function. */
  on(kind: EventKind | "*", fn: (ev: ClientEvent) => void): () => void {
    let set = this.listeners.get(kind);
    if (!set) this.listeners.set(kind, (set = new Set()));
    set.add(fn);
    return () => set.delete(fn);
  }

  /** Connect and wait for the first session, or a terminal error, or startTimeout. */
  start(): Promise<void> {
    if (this.error) return Promise.reject(this.error);
    if (this.stats.connects > 0 && this._state === "open") return Promise.resolve();
    const p = new Promise<void>((resolve, reject) => this.startWaiters.push({ resolve, reject }));
    if (this._state === "idle") {
      this.downSince = now();
      this.hookBrowser();
      this.tickTimer = setInterval(() => this.tick(), this.tickEvery());
      this._state = "connecting";
      void this.connect();
      const timer = setTimeout(() => {
        if (this.stats.connects === 0 && !this.error) {
          this.fail(new StartTimeout(`no session with ${this.urls.join(", ")} within ${this.o.startTimeout} ms`));
        }
      }, this.o.startTimeout);
      const clear = (): void => clearTimeout(timer);
      p.then(clear, clear);
    }
    return p;
  }

  /**
   * Queue `data` (any JSON value) for the server; resolves to its sequence number
   * once it is in the send buffer, or with `waitAck` once the server processed it.
   * While the buffer is full it waits, or throws SendBufferFull (onFull "throw").
   */
  async send(data: unknown, opts: { waitAck?: boolean } = {}): Promise<number> {
    if (this.error) throw this.error;
    const json = encodeData(data);
    const size = utf8Length(json);
    if (size > this.o.maxPendingBytes) {
      throw new RangeError(`message of ${size} bytes exceeds maxPendingBytes ${this.o.maxPendingBytes}`);
    }
    let seq: number;
    if (this.sendQueue.length === 0 && this.session.outbox.hasRoom(size)) {
      seq = this.session.push(json, size);
      this.stats.sent++;
      this.flush();
    } else if (this.o.onFull === "throw") {
      throw new SendBufferFull(`${this.pending} messages await an ack`);
    } else {
      seq = await new Promise<number>((resolve, reject) => this.sendQueue.push({ json, size, resolve, reject }));
    }
    if (opts.waitAck && seq > this.session.outbox.acked) {
      await new Promise<void>((resolve, reject) => this.ackWaiters.push({ seq, resolve, reject }));
    }
    return seq;
  }

  /** The next message from the server, exactly once and in order. */
  recv(): Promise<unknown> {
    if (this.onMessage) return Promise.reject(new TypeError("recv() is not available with onMessage"));
    if (this.recvQueue.length > 0) {
      const v = this.recvQueue.shift();
      this.taken();
      return Promise.resolve(v);
    }
    if (this.error) return Promise.reject(this.error);
    return new Promise((resolve, reject) => this.recvWaiters.push({ resolve, reject }));
  }

  /** `for await (const m of client)`: every message until the client is closed. */
  async *[Symbol.asyncIterator](): AsyncGenerator<unknown, void, undefined> {
    for (;;) {
      try {
        yield await this.recv();
      } catch (e) {
        if (e instanceof ClientClosed) return;
        throw e;
      }
    }
  }

  /**
   * End the session for good: close code 1000 tells the server it will not be
   * resumed. Unacked sends fail with ClientClosed. Resolves once the socket closed
   * (at most about 2 s).
   */
  close(): Promise<void> {
    if (this._state === "stopped") return Promise.resolve();
    const conn = this.conn;
    const done = new Promise<void>((resolve) => {
      if (!conn) return resolve();
      this.closeWaiters.push(resolve);
      setTimeout(resolve, 2000);
    });
    if (conn) conn.close(CloseCode.NORMAL);
    this.fail(new ClientClosed("client closed"), false);
    return done;
  }

  // ------------------------------------------------------------------ connections

  private async connect(): Promise<void> {
    if (this.error) return;
    this._state = "connecting";
    const url = this.urls[this.urlIndex]!;
    this.connUrl = url;
    try {
      this.wsClass ??= await resolveWebSocket(undefined);
    } catch (e) {
      this.fail(new ClientError((e as Error).message));
      return;
    }
    if (this.error) return;
    let conn: Conn;
    try {
      conn = new Conn(this.wsClass, url, this.token, this.o.maxMessage, {
        open: () => {
          this.lastRx = this.lastTx = now();
          conn.send(this.session.hello());
        },
        text: (raw) => this.incoming(conn, raw),
        alive: () => this.alive(conn),
        closed: (code, reason, refusal) => this.closed(conn, code, reason, refusal),
      });
    } catch (e) {
      // A URL the WebSocket class refuses (browsers throw SyntaxError): nothing to retry.
      this.fail(new ClientError(`cannot open ${url}: ${(e as Error).message}`));
      return;
    }
    this.conn = conn;
    this.connectTimer = setTimeout(() => {
      // No welcome in time: drop the attempt and reconnect with backoff (never fatal).
      if (this.conn === conn && this._state === "connecting") this.drop(conn, "no welcome within connectTimeout", false);
    }, this.o.connectTimeout);
  }

  private incoming(conn: Conn, raw: string): void {
    if (conn !== this.conn) return;
    let r: Incoming;
    try {
      r = this.session.receive(raw);
    } catch (e) {
      if (!(e instanceof ProtocolError)) throw e;
      conn.close(CloseCode.SESSION_PROTOCOL_VIOLATION);
      this.fail(new ServerProtocolError(e.message));
      return;
    }
    this.alive(conn);
    if (r.kind === "welcome") this.welcomed(r.outcome);
    else if (r.kind === "msg") {
      if (r.fresh) {
        this.stats.received++;
        this.deliver(r.data);
      } else {
        this.stats.duplicates++;
      }
    }
    if (r.released > 0) this.released(r.released);
    if (r.kind === "msg") this.scheduleAck();
  }

  private welcomed(outcome: WelcomeOutcome): void {
    const kind = outcome.kind;
    clearTimeout(this.connectTimer);
    this._state = "open";
    this.upSince = now();
    this.stats.connects++;
    this.resumed = kind === "resumed";
    if (this.lostAt !== null) {
      this.stats.lastResumeMs = now() - this.lostAt;
      this.lostAt = null;
    }
    if (this.downSince !== null && this.stats.connects > 1) this.stats.disconnectedMs += now() - this.downSince;
    this.downSince = null;
    if (kind === "resumed") {
      this.stats.resumes++;
      this.emit("resumed");
    } else if (outcome.kind === "not_resumed") {
      this.stats.notResumed++;
      this.remapAckWaiters(outcome.renumbered);
      this.emit("not_resumed");
    }
    this.emit("connected");
    for (const w of this.startWaiters.splice(0)) w.resolve();
    this.flush();
  }

  private closed(conn: Conn, code: number | null, reason: string, refusal: Refusal | null): void {
    if (conn !== this.conn) return;
    for (const w of this.closeWaiters.splice(0)) w();
    if (this._state === "stopped") return;
    this.lost(code, refusal ? `HTTP ${refusal.status}` : reason);
    let action: Action;
    let hint: CloseHint;
    if (refusal) {
      ({ action, hint } = refusalAction(refusal.status, refusal.retryAfter));
      if (action === "stop") {
        this.fail(
          refusal.status === 401
            ? new Unauthorized(CloseCode.UNAUTHORIZED, "HTTP 401")
            : new HandshakeRefused(refusal.status, refusal.body),
        );
        return;
      }
    } else {
      action = closeAction(code);
      hint = decodeHint(reason);
      if (action === "stop") {
        const C = code === CloseCode.UNAUTHORIZED ? Unauthorized : TerminalClose;
        this.fail(new C(code ?? 0, reason));
        return;
      }
    }
    // A move is followed to the new owner through the same gateway; any other
    // ending (a drain, a failure) tries the next gateway.
    if (code !== CloseCode.MOVED) this.urlIndex = (this.urlIndex + 1) % this.urls.length;
    this.retry(action, hint, false);
  }

  /** Bookkeeping for a connection that ended, whatever the reason. */
  private lost(code: number | null, reason: string): void {
    const wasUp = this._state === "open";
    const url = this.connUrl;
    this.conn = null;
    clearTimeout(this.connectTimer);
    clearTimeout(this.ackTimer);
    this.ackTimer = undefined;
    this.session.disconnected();
    this.expectSince = null;
    this.pingOutstanding = false;
    if (wasUp) {
      this.lostAt = now();
      this.downSince = this.lostAt;
    }
    this.lived = wasUp ? now() - this.upSince : 0;
    this._state = "waiting";
    this.emit("disconnected", code, reason, url);
    if (code === CloseCode.MOVED) this.emit("moved", code, reason, url);
  }

  /** Give up on a connection the client considers dead or stale, and reconnect. */
  private drop(conn: Conn, why: string, immediately: boolean): void {
    conn.abandon(ABANDON_CODE);
    this.lost(null, why);
    this.urlIndex = (this.urlIndex + 1) % this.urls.length;
    this.retry("reconnect", {}, immediately);
  }

  private retry(action: Action, hint: CloseHint, immediately: boolean): void {
    if (this._state === "stopped") return; // an event listener closed the client
    const delay = immediately ? 0 : this.attempts.delay(action, hint, this.lived, this.o.rand());
    if (delay === null) return; // "stop" is handled by the callers
    if (this.giveUpAfter !== undefined && this.downSince !== null) {
      const down = now() - this.downSince;
      if (down + delay > this.giveUpAfter) {
        this.fail(new GaveUp(`no session for ${Math.round(down)} ms (giveUpAfter ${this.giveUpAfter} ms)`));
        return;
      }
    }
    this._state = "waiting";
    this.retryAt = now() + delay;
    // A server's hint is a promise to the fleet to stay away that long; a plain
    // backoff may be cut short when the browser says the network is back.
    this.retryHinted = action === "reconnect_window" || (action === "retry_after" && hint.afterMs !== undefined);
    this.armRetry(delay);
  }

  private armRetry(delay: number): void {
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      if (this._state !== "waiting") return;
      this.stats.reconnects++;
      void this.connect();
    }, delay);
  }

  // ------------------------------------------------------------------ writing and acks

  private flush(): void {
    const conn = this.conn;
    if (!conn || this._state !== "open") return;
    const frames = this.session.due();
    if (frames.length === 0) return;
    for (const f of frames) conn.send(f);
    this.lastTx = now();
    if (this.session.awaiting && this.expectSince === null) this.expectSince = this.lastTx;
    if (this.session.ackLag === 0) {
      clearTimeout(this.ackTimer);
      this.ackTimer = undefined;
    }
  }

  private scheduleAck(): void {
    const lag = this.session.ackLag;
    if (lag >= this.o.ackEvery) this.flush();
    else if (lag > 0 && this.ackTimer === undefined) {
      this.ackTimer = setTimeout(() => {
        this.ackTimer = undefined;
        this.flush();
      }, this.o.ackDelay);
    }
  }

  private released(n: number): void {
    this.stats.acked += n;
    const acked = this.session.outbox.acked;
    while (this.ackWaiters.length > 0 && this.ackWaiters[0]!.seq <= acked) this.ackWaiters.shift()!.resolve();
    // Sends waiting for room go in, in order, as far as the room goes.
    let moved = false;
    while (this.sendQueue.length > 0 && this.session.outbox.hasRoom(this.sendQueue[0]!.size)) {
      const q = this.sendQueue.shift()!;
      q.resolve(this.session.push(q.json, q.size));
      this.stats.sent++;
      moved = true;
    }
    if (moved) this.flush();
  }

  private remapAckWaiters(renumbered: Map<number, number>): void {
    this.ackWaiters = this.ackWaiters.flatMap((w) => {
      const seq = renumbered.get(w.seq);
      return seq === undefined ? [] : [{ ...w, seq }];
    });
  }

  // ------------------------------------------------------------------ delivery

  private deliver(data: unknown): void {
    if (this.onMessage) {
      this.taken();
      try {
        this.onMessage(data);
      } catch (e) {
        // The app's bug must surface, without breaking the session's bookkeeping.
        queueMicrotask(() => {
          throw e;
        });
      }
      return;
    }
    const w = this.recvWaiters.shift();
    if (w) {
      this.taken();
      w.resolve(data);
    } else {
      this.recvQueue.push(data);
    }
  }

  private taken(): void {
    this.session.consumed();
    this.scheduleAck();
  }

  // ------------------------------------------------------------------ liveness

  /**
   * Something arrived: the connection is alive. An answer is still due if
   * messages written on it are unacked or a ping is out; the wait restarts now.
   */
  private alive(conn: Conn): void {
    if (conn !== this.conn) return;
    this.lastRx = now();
    this.pingOutstanding = false;
    this.expectSince = this.session.awaiting ? this.lastRx : null;
  }

  private tickEvery(): number {
    return Math.max(50, Math.min(1000, this.o.heartbeatInterval / 2, this.o.heartbeatTimeout / 4));
  }

  /**
   * Dead-connection detection. Browsers answer the server's WebSocket pings but
   * cannot see them, nor send their own, so the client watches what it can: when
   * an answer is due (messages written and unacked, or a ping out) and nothing at
   * all arrives for heartbeatTimeout, the connection is dead; it is dropped and the
   * session resumed on a new one. An idle connection has nothing in flight and so
   * nothing to lose; after heartbeatInterval without sending, the client sends a
   * keepalive: a ping with `ws` (its pong is the answer), else a standalone ack
   * repeating the last one, which the server ignores and which keeps the path warm
   * and makes a broken TCP connection fail on write.
   */
  private tick(): void {
    const conn = this.conn;
    if (!conn || this._state !== "open") return;
    const t = now();
    if (this.expectSince !== null && t - this.expectSince > this.o.heartbeatTimeout) {
      this.drop(conn, `no answer within heartbeatTimeout (${this.o.heartbeatTimeout} ms)`, false);
      return;
    }
    if (t - this.lastTx >= this.o.heartbeatInterval) {
      this.lastTx = t;
      if (conn.canPing) {
        conn.ping();
        this.pingOutstanding = true;
        this.expectSince ??= t;
      } else {
        conn.send(this.session.keepalive());
      }
    }
  }

  // ------------------------------------------------------------------ browser signals

  private hookBrowser(): void {
    const w = globalThis as {
      addEventListener?: (t: string, fn: () => void) => void;
      removeEventListener?: (t: string, fn: () => void) => void;
      document?: { visibilityState?: string; addEventListener?: (t: string, fn: () => void) => void; removeEventListener?: (t: string, fn: () => void) => void };
    };
    if (!this.o.browserEvents || typeof w.addEventListener !== "function" || !w.document) return;
    const doc = w.document;
    const online = (): void => this.wake("online");
    const offline = (): void => {
      this.offlineSeen = true;
    };
    const visible = (): void => {
      if (doc.visibilityState === "visible") this.wake("visible");
    };
    w.addEventListener("online", online);
    w.addEventListener("offline", offline);
    doc.addEventListener?.("visibilitychange", visible);
    this.unhook = () => {
      w.removeEventListener?.("online", online);
      w.removeEventListener?.("offline", offline);
      doc.removeEventListener?.("visibilitychange", visible);
    };
  }

  /**
   * The network is back, or a hidden tab is visible again: its timers may have been
   * throttled for minutes. A pending reconnect runs now if its time has come (or,
   * on `online`, if it was a plain backoff, not a server's hint); an open
   * connection gets its liveness check at once, and is replaced if the browser
   * reported being offline while it was open (its TCP path is likely gone).
   */
  wake(reason: "online" | "visible"): void {
    const offline = this.offlineSeen;
    this.offlineSeen = false;
    if (this._state === "waiting" && this.retryTimer !== undefined) {
      const left = this.retryAt - now();
      if (left <= 0 || (reason === "online" && !this.retryHinted)) this.armRetry(0);
      else this.armRetry(left);
    } else if (this._state === "open" && this.conn) {
      if (reason === "online" && offline) this.drop(this.conn, "network changed", true);
      else this.tick();
    }
  }

  // ------------------------------------------------------------------ ending

  /** Stop for good with `err`; every waiter fails with it. */
  private fail(err: ClientError, closeConn = true): void {
    if (this._state === "stopped") return;
    this.error = err;
    const conn = this.conn;
    if (conn && closeConn) conn.abandon(CloseCode.NORMAL);
    if (closeConn) this.conn = null;
    this._state = "stopped";
    for (const t of [this.connectTimer, this.retryTimer, this.ackTimer]) clearTimeout(t);
    clearInterval(this.tickTimer);
    this.unhook?.();
    this.unhook = null;
    this.session.disconnected();
    for (const w of this.startWaiters.splice(0)) w.reject(err);
    for (const w of this.sendQueue.splice(0)) w.reject(err);
    for (const w of this.ackWaiters.splice(0)) w.reject(err);
    for (const w of this.recvWaiters.splice(0)) w.reject(err);
    this.emit("stopped", null, err.message, this.connUrl, err);
  }

  private emit(kind: EventKind, code: number | null = null, reason = "", url = this.connUrl, error?: ClientError): void {
    const ev: ClientEvent = { kind, code, reason, url, at: now() };
    if (error) ev.error = error;
    for (const set of [this.listeners.get(kind), this.listeners.get("*")]) {
      for (const fn of set ?? []) {
        try {
          fn(ev);
        } catch (e) {
          queueMicrotask(() => {
            throw e;
          });
        }
      }
    }
  }
}

/** Add `key=` to a gateway URL: percent-encoded UTF-8 (a `+` would read as a space). */
function withKey(url: string, key: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new TypeError(`url must be an absolute ws:// or wss:// URL, got ${JSON.stringify(url)}`);
  }
  if ((u.protocol !== "ws:" && u.protocol !== "wss:") || !u.host) {
    throw new TypeError(`url must be ws:// or wss:// with a host, got ${JSON.stringify(url)}`);
  }
  const search = u.search.length > 1 ? `${u.search}&` : "?";
  return `${u.protocol}//${u.host}${u.pathname}${search}key=${encodeURIComponent(key)}`;
}

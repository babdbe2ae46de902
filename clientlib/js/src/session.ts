/**
 * Sequence numbers, cumulative acks, replay and duplicate drop: the client's side
 * of one logical session. Sans-I/O: frames in, frames and decisions out.
 *
 * - {@link Outbox} numbers outgoing messages and keeps each until the server's
 *   cumulative ack covers it, so it can be resent after a reconnect; bounded in
 *   count and bytes.
 * - {@link Inbox} remembers the highest in-order seq received and drops anything
 *   at or below it, so a resend is never delivered twice.
 * - {@link ClientSession} ties them to the hello/welcome exchange and decides what
 *   a connection must write next. The WebSocket shell (client.ts) only moves
 *   strings and runs timers.
 */

import {
  ProtocolError,
  type Welcome,
  decode,
  encodeAck,
  encodeHello,
  encodeMsgRaw,
} from "./protocol.js";

export class OutboxFull extends Error {
  override name = "OutboxFull";
}

interface Pending {
  seq: number;
  json: string;
  size: number;
}

const utf8 = new TextEncoder();

/** Bytes a string takes on the wire (UTF-8), which is what the byte bound counts. */
export function utf8Length(s: string): number {
  // Fast path: pure ASCII is one byte a character.
  // eslint-disable-next-line no-control-regex
  return /^[\x00-\x7f]*$/.test(s) ? s.length : utf8.encode(s).length;
}

/** Outgoing messages not yet acknowledged by the server, oldest first. */
export class Outbox {
  private items: Pending[] = [];
  private head = 0; // items before head are released; compacted now and then
  /** Highest seq the server has acknowledged. */
  acked: number;
  nextSeq: number;
  bytes = 0;

  constructor(
    readonly maxCount = 1024,
    readonly maxBytes = 1 << 20,
    nextSeq = 1,
  ) {
    this.nextSeq = nextSeq;
    this.acked = nextSeq - 1;
  }

  get length(): number {
    return this.items.length - this.head;
  }

  get lastSeq(): number {
    return this.nextSeq - 1;
  }

  hasRoom(size = 0): boolean {
    return this.length < this.maxCount && this.bytes + size <= this.maxBytes;
  }

  /** Number a message (already JSON) and keep it for replay; returns its seq. */
  push(json: string, size = utf8Length(json)): number {
    if (!this.hasRoom(size)) throw new OutboxFull(`${this.length} messages, ${this.bytes} bytes unacked`);
    const seq = this.nextSeq++;
    this.items.push({ seq, json, size });
    this.bytes += size;
    return seq;
  }

  /**
   * Apply a cumulative ack; returns how many messages it released. An ack below
   * what was already acked is a harmless reorder; an ack for a seq never sent is
   * a server bug.
   */
  ack(upto: number): number {
    if (upto > this.lastSeq) {
      throw new ProtocolError(`ack ${upto} for a message never sent (last ${this.lastSeq})`);
    }
    let released = 0;
    while (this.head < this.items.length && this.items[this.head]!.seq <= upto) {
      this.bytes -= this.items[this.head]!.size;
      this.head++;
      released++;
    }
    if (this.head > 256 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    if (upto > this.acked) this.acked = upto;
    return released;
  }

  /** Encoded envelopes for the messages with seq > `written`, each carrying `ack`. */
  framesAfter(written: number, ack: number): string[] {
    const out: string[] = [];
    for (let i = this.head; i < this.items.length; i++) {
      const p = this.items[i]!;
      if (p.seq > written) out.push(encodeMsgRaw(p.seq, ack, p.json));
    }
    return out;
  }

  /** The unacked messages' JSON, oldest first (for renumbering into a new session). */
  pendingJson(): { seq: number; json: string; size: number }[] {
    return this.items.slice(this.head);
  }
}

/** Incoming sequence tracking: in-order delivery, duplicates dropped. */
export class Inbox {
  constructor(public last = 0) {}

  /**
   * True if `seq` is new and must be delivered; false for a duplicate (a resend).
   * A gap is a protocol violation: the transport is ordered and resends start
   * from the oldest unacked message.
   */
  accept(seq: number): boolean {
    if (seq <= this.last) return false;
    if (seq !== this.last + 1) throw new ProtocolError(`seq ${seq} skips ahead of ${this.last + 1}`);
    this.last = seq;
    return true;
  }
}

export type WelcomeOutcome =
  /** The first session of this client. */
  | { kind: "new" }
  /** The server kept the session: nothing was lost. */
  | { kind: "resumed" }
  /**
   * The server lost the session: our unacked messages were renumbered from 1 and
   * will be resent (their fate is unknown). `renumbered` maps old seq → new seq.
   */
  | { kind: "not_resumed"; renumbered: Map<number, number> };

export type Incoming =
  | { kind: "welcome"; outcome: WelcomeOutcome; released: number }
  | { kind: "msg"; fresh: boolean; data: unknown; released: number }
  | { kind: "ack"; released: number };

/**
 * The client side of one logical session, across any number of connections.
 *
 * Acks: what the client acknowledges is what it has received, less what waits
 * beyond `recvBuffer` unread by the app. A reader that falls behind thus stops
 * acknowledging, and the server (which keeps every unacked reply) stops taking
 * more input from it: back-pressure without pausing the socket, which browsers
 * cannot do.
 */
export class ClientSession {
  sid: string | null = null;
  outbox: Outbox;
  inbox = new Inbox();
  /** Received in this session and not yet taken by the app. */
  held = 0;
  /** Received in a previous (lost) session and not yet taken: never acked in this one. */
  staleHeld = 0;
  /** Highest own seq written on the current connection. */
  written = 0;
  /** Highest ack written on the current connection. */
  ackSent = 0;
  /** A welcome arrived on the current connection: msgs may be written. */
  up = false;

  constructor(
    readonly maxPending = 1024,
    readonly maxPendingBytes = 1 << 20,
    readonly recvBuffer = 1024,
  ) {
    this.outbox = new Outbox(maxPending, maxPendingBytes);
  }

  /** The first frame of every connection: start (sid null) or resume. */
  hello(): string {
    this.up = false;
    return encodeHello(this.sid, this.inbox.last, this.outbox.acked);
  }

  /** The connection ended: nothing more may be written until the next welcome. */
  disconnected(): void {
    this.up = false;
  }

  /** The ack this client may give now (see the class comment). */
  get ackable(): number {
    return this.inbox.last - Math.max(0, this.held - this.recvBuffer);
  }

  /** Received and ackable, but not yet acknowledged on this connection. */
  get ackLag(): number {
    return this.up ? Math.max(0, this.ackable - this.ackSent) : 0;
  }

  /** Messages written on this connection that the server has not acknowledged yet. */
  get awaiting(): boolean {
    return this.up && this.written > this.outbox.acked;
  }

  /** The app took one received message. */
  consumed(): void {
    if (this.staleHeld > 0) this.staleHeld--;
    else if (this.held > 0) this.held--;
  }

  push(json: string, size?: number): number {
    return this.outbox.push(json, size);
  }

  /** Handle one frame from the server. Anything the protocol forbids throws ProtocolError. */
  receive(raw: string): Incoming {
    const env = decode(raw);
    if (!this.up) {
      if (env.t !== "welcome") throw new ProtocolError(`expected welcome, got ${env.t}`);
      const before = this.outbox.length;
      const outcome = this.welcome(env);
      return { kind: "welcome", outcome, released: Math.max(0, before - this.outbox.length) };
    }
    if (env.t === "msg") {
      const released = this.outbox.ack(env.ack);
      const fresh = this.inbox.accept(env.seq);
      if (fresh) this.held++;
      return { kind: "msg", fresh, data: env.d, released };
    }
    if (env.t === "ack") return { kind: "ack", released: this.outbox.ack(env.ack) };
    throw new ProtocolError(`unexpected ${env.t} after welcome`);
  }

  private welcome(w: Welcome): WelcomeOutcome {
    let outcome: WelcomeOutcome;
    if (w.resumed && this.sid !== null && w.sid === this.sid) {
      // welcome.last below an ack the server already gave means it forgot what it
      // processed; resending would process those messages twice.
      if (w.last < this.outbox.acked) {
        throw new ProtocolError(
          `resumed welcome.last ${w.last} is below the ack ${this.outbox.acked} already received`,
        );
      }
      this.outbox.ack(w.last);
      outcome = { kind: "resumed" };
    } else if (this.sid === null) {
      outcome = { kind: "new" };
    } else {
      outcome = { kind: "not_resumed", renumbered: this.renumber() };
      this.staleHeld += this.held;
      this.held = 0;
      this.inbox = new Inbox();
    }
    this.sid = w.sid;
    this.written = this.outbox.acked; // everything unacked is resent on this connection
    this.ackSent = 0;
    this.up = true;
    return outcome;
  }

  private renumber(): Map<number, number> {
    const old = this.outbox;
    const fresh = new Outbox(old.maxCount, old.maxBytes);
    const mapping = new Map<number, number>();
    for (const p of old.pendingJson()) mapping.set(p.seq, fresh.push(p.json, p.size));
    this.outbox = fresh;
    return mapping;
  }

  /**
   * What the connection should write now: the unacked messages beyond what it
   * already carried (each with the current ack), else a standalone ack if the ack
   * advanced. Nothing before the welcome.
   */
  due(): string[] {
    if (!this.up) return [];
    const ack = this.ackable;
    const frames = this.outbox.framesAfter(this.written, ack);
    if (frames.length > 0) {
      this.written = this.outbox.lastSeq;
      this.ackSent = Math.max(this.ackSent, ack);
      return frames;
    }
    if (ack > this.ackSent) {
      this.ackSent = ack;
      return [encodeAck(ack)];
    }
    return [];
  }

  /** A standalone ack repeating the current one: a keepalive the server ignores. */
  keepalive(): string {
    const ack = this.ackable;
    this.ackSent = Math.max(this.ackSent, ack);
    return encodeAck(ack);
  }
}

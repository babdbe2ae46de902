/**
 * When to reconnect: exponential backoff with full jitter, honouring server hints. Pure.
 *
 * The Python client's `clientlib/backoff.py` in milliseconds, plus the attempt
 * counting rule both clients follow: the count starts at 0 at the first failure
 * after a session and resets after a connection that lived `stableAfter`.
 */

import type { Action, CloseHint } from "./protocol.js";

export interface BackoffPolicy {
  /** Ceiling of the first wait; doubles per failed attempt. */
  base: number;
  /** Largest ceiling. */
  cap: number;
  /** Window after a move or drain whose close reason carried none. */
  defaultWindow: number;
  /** A connection that lived this long resets the attempt count. */
  stableAfter: number;
}

export const DEFAULT_BACKOFF: Readonly<BackoffPolicy> = {
  base: 250,
  cap: 30_000,
  defaultWindow: 1_000,
  stableAfter: 10_000,
};

export function checkPolicy(p: BackoffPolicy): void {
  if (!(p.base > 0 && p.base <= p.cap)) throw new RangeError("backoff needs 0 < base <= cap");
  if (!(p.defaultWindow > 0) || !(p.stableAfter >= 0)) {
    throw new RangeError("backoff needs defaultWindow > 0 and stableAfter >= 0");
  }
}

/**
 * Milliseconds to wait before reconnect attempt `attempt` (0 = first), or null to
 * stop. `rand` is a uniform draw in [0, 1), injected so tests are deterministic.
 *
 * - reconnect: full jitter, uniform in [0, min(cap, base·2^attempt)] (spreads a crowd best);
 * - reconnect_window: uniform in the hinted window (default `defaultWindow`);
 * - retry_after: the hinted wait plus up to a quarter more, so that everyone told
 *   "after N" does not return at exactly N; without a hint, normal backoff.
 */
export function reconnectDelay(
  policy: BackoffPolicy,
  attempt: number,
  action: Action,
  hint: CloseHint,
  rand: number,
): number | null {
  if (action === "stop") return null;
  if (action === "reconnect_window") return rand * (hint.windowMs ?? policy.defaultWindow);
  if (action === "retry_after" && hint.afterMs !== undefined) {
    return hint.afterMs + (rand * hint.afterMs) / 4;
  }
  return rand * Math.min(policy.cap, policy.base * 2 ** Math.min(attempt, 32));
}

/** The attempt count across one client's reconnects. */
export class Attempts {
  private next = 0;

  constructor(readonly policy: BackoffPolicy) {}

  /** The delay before the next attempt, after a connection that lived `livedMs` (0: never up). */
  delay(action: Action, hint: CloseHint, livedMs: number, rand: number): number | null {
    if (livedMs >= this.policy.stableAfter) this.next = 0;
    const d = reconnectDelay(this.policy, this.next, action, hint, rand);
    this.next++;
    return d;
  }

  get count(): number {
    return this.next;
  }
}

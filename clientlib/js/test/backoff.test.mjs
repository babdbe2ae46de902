// Reconnect timing: full jitter, hints honoured within bounds, the attempt count rule.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Attempts, DEFAULT_BACKOFF as P, checkPolicy, reconnectDelay } from "../dist/backoff.js";

test("full jitter: uniform in [0, min(cap, base * 2^attempt)]", () => {
  assert.equal(reconnectDelay(P, 0, "reconnect", {}, 0.999999) < 250, true);
  assert.equal(reconnectDelay(P, 0, "reconnect", {}, 0.5), 125);
  assert.equal(reconnectDelay(P, 3, "reconnect", {}, 0.5), 1000);
  assert.equal(reconnectDelay(P, 20, "reconnect", {}, 0.5), 15_000); // capped at 30 s
  assert.equal(reconnectDelay(P, 10_000, "reconnect", {}, 1), 30_000); // no overflow
  assert.equal(reconnectDelay(P, 5, "reconnect", {}, 0), 0);
});

test("windows and retry-after hints; stop is null", () => {
  assert.equal(reconnectDelay(P, 9, "reconnect_window", { windowMs: 800 }, 0.5), 400);
  assert.equal(reconnectDelay(P, 9, "reconnect_window", {}, 0.5), 500); // default 1 s
  assert.equal(reconnectDelay(P, 9, "retry_after", { afterMs: 2000 }, 0), 2000);
  assert.equal(reconnectDelay(P, 9, "retry_after", { afterMs: 2000 }, 1), 2500); // + up to a quarter
  assert.equal(reconnectDelay(P, 2, "retry_after", {}, 0.5), 500); // no hint: normal backoff
  assert.equal(reconnectDelay(P, 0, "stop", { afterMs: 5 }, 0.5), null);
});

test("attempts start at 0 after a session and reset after a stable connection", () => {
  const a = new Attempts(P);
  const ceil = () => a.delay("reconnect", {}, 0, 1); // rand 1: the ceiling itself
  assert.deepEqual([ceil(), ceil(), ceil(), ceil()], [250, 500, 1000, 2000]);
  // a session that lived 10 s: the next failure is attempt 0 again
  assert.equal(a.delay("reconnect", {}, 10_000, 1), 250);
  assert.equal(ceil(), 500);
  // a short-lived session does not reset: flapping keeps backing off
  assert.equal(a.delay("reconnect", {}, 9_999, 1), 1000);
});

test("policies are checked", () => {
  assert.throws(() => checkPolicy({ ...P, base: 0 }), RangeError);
  assert.throws(() => checkPolicy({ ...P, base: 100, cap: 50 }), RangeError);
  assert.throws(() => checkPolicy({ ...P, defaultWindow: 0 }), RangeError);
  assert.throws(() => checkPolicy({ ...P, stableAfter: -1 }), RangeError);
  checkPolicy(P);
});

// The codec and close-code rules, with adversarial input: anything malformed is a
// ProtocolError, never another exception and never a silently wrong value.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import {
  CLOSE_ACTIONS,
  CloseCode,
  MAX_SEQ,
  ProtocolError,
  closeAction,
  decode,
  decodeHint,
  encodeAck,
  encodeData,
  encodeHello,
  encodeMsgRaw,
  refusalAction,
} from "../dist/protocol.js";

test("valid envelopes decode", () => {
  assert.deepEqual(decode('{"t":"msg","seq":1,"ack":0,"d":{"x":[1,"é"]}}'), {
    t: "msg",
    seq: 1,
    ack: 0,
    d: { x: [1, "é"] },
  });
  assert.deepEqual(decode('{"t":"msg","seq":7,"ack":3,"d":null}').d, null);
  assert.deepEqual(decode('{"t":"ack","ack":0}'), { t: "ack", ack: 0 });
  assert.deepEqual(decode('{"t":"welcome","sid":"k2J9 x","resumed":true,"last":5}'), {
    t: "welcome",
    sid: "k2J9 x",
    resumed: true,
    last: 5,
  });
  // hello without ack (a peer that predates it) and with it
  assert.deepEqual(decode('{"t":"hello","sid":null,"last":0}'), { t: "hello", sid: null, last: 0, ack: 0 });
  assert.equal(decode(encodeHello("s", 4, 9)).ack, 9);
  assert.deepEqual(decode(`{"t":"msg","seq":${MAX_SEQ},"ack":${MAX_SEQ},"d":1}`).seq, MAX_SEQ);
});

test("encoders produce what decode reads back", () => {
  assert.deepEqual(decode(encodeMsgRaw(3, 2, encodeData({ a: "b\u2028" }))), { t: "msg", seq: 3, ack: 2, d: { a: "b\u2028" } });
  assert.deepEqual(decode(encodeAck(12)), { t: "ack", ack: 12 });
  assert.deepEqual(JSON.parse(encodeHello(null, 0, 0)), { t: "hello", sid: null, last: 0, ack: 0 });
});

const BAD = [
  "",
  "not json",
  "{",
  "[]",
  "null",
  "42",
  '"msg"',
  "{}",
  '{"t":"nope"}',
  '{"t":null}',
  '{"t":"msg","seq":1,"ack":0}', // no d
  '{"t":"msg","seq":0,"ack":0,"d":1}', // seq starts at 1
  '{"t":"msg","seq":-1,"ack":0,"d":1}',
  '{"t":"msg","seq":1.5,"ack":0,"d":1}',
  '{"t":"msg","seq":"1","ack":0,"d":1}',
  '{"t":"msg","seq":true,"ack":0,"d":1}',
  '{"t":"msg","seq":9007199254740992,"ack":0,"d":1}', // 2^53
  '{"t":"msg","seq":1e300,"ack":0,"d":1}',
  '{"t":"msg","seq":1,"ack":-1,"d":1}',
  '{"t":"msg","seq":1,"d":1}',
  '{"t":"ack"}',
  '{"t":"ack","ack":null}',
  '{"t":"ack","ack":[1]}',
  '{"t":"welcome","sid":"s","resumed":1,"last":0}',
  '{"t":"welcome","sid":"s","resumed":"true","last":0}',
  '{"t":"welcome","sid":"","resumed":false,"last":0}',
  '{"t":"welcome","sid":null,"resumed":false,"last":0}',
  '{"t":"welcome","sid":7,"resumed":false,"last":0}',
  `{"t":"welcome","sid":"${"x".repeat(65)}","resumed":false,"last":0}`,
  '{"t":"welcome","sid":"a\\nb","resumed":false,"last":0}',
  '{"t":"welcome","sid":"a\\u200bb","resumed":false,"last":0}', // format character
  '{"t":"welcome","sid":"s","resumed":false}',
  '{"t":"hello","sid":"s","last":0,"ack":-2}',
];

test("malformed envelopes are ProtocolErrors", () => {
  for (const raw of BAD) assert.throws(() => decode(raw), ProtocolError, raw);
});

test("close codes follow the table, unknown codes their range", () => {
  assert.equal(closeAction(CloseCode.MOVED), "reconnect_window");
  assert.equal(closeAction(CloseCode.TRY_AGAIN_LATER), "retry_after");
  assert.equal(closeAction(CloseCode.NOT_OWNER), "reconnect");
  assert.equal(closeAction(CloseCode.NORMAL), "stop");
  assert.equal(closeAction(null), "reconnect");
  assert.equal(closeAction(undefined), "reconnect");
  assert.equal(closeAction(4099), "reconnect");
  assert.equal(closeAction(4499), "reconnect");
  assert.equal(closeAction(4500), "stop");
  assert.equal(closeAction(4999), "stop");
  assert.equal(closeAction(1005), "reconnect");
  assert.equal(closeAction(3000), "reconnect");
  assert.equal(closeAction(5000), "reconnect");
});

test("the close-code table matches docs/protocol.md", () => {
  const doc = readFileSync(new URL("../../../docs/protocol.md", import.meta.url), "utf8");
  const section = doc.slice(doc.indexOf("## Close codes"), doc.indexOf("## Keys"));
  const rows = [...section.matchAll(/^\| (\d{4}) \| (\w+) \| (\w+) \|/gm)];
  assert.ok(rows.length >= 20);
  const fromDoc = Object.fromEntries(rows.map((r) => [r[1], r[3]]));
  assert.deepEqual(fromDoc, Object.fromEntries(Object.entries(CLOSE_ACTIONS)));
  for (const r of rows) assert.equal(CloseCode[r[2]], Number(r[1]), r[2]);
});

test("close hints: only integers in 1 ms – 1 h from a JSON object", () => {
  assert.deepEqual(decodeHint(""), {});
  assert.deepEqual(decodeHint("bye"), {});
  assert.deepEqual(decodeHint('{"after_ms": 2000}'), { afterMs: 2000 });
  assert.deepEqual(decodeHint('{"window_ms":800,"other":1}'), { windowMs: 800 });
  assert.deepEqual(decodeHint('{"after_ms":1,"window_ms":3600000}'), { afterMs: 1, windowMs: 3600000 });
  for (const bad of [
    '{"after_ms":0}',
    '{"after_ms":-5}',
    '{"after_ms":3600001}',
    '{"after_ms":1.5}',
    '{"after_ms":"100"}',
    '{"after_ms":true}',
    '{"after_ms":null}',
    '{"after_ms":{"x":1}}',
    '{"after_ms":1e999}',
    "[1000]",
    "{not json",
    '{"window_ms":NaN}',
  ]) {
    assert.deepEqual(decodeHint(bad), {}, bad);
  }
});

test("HTTP refusals: final statuses stop, 429/503 honour Retry-After, the rest back off", () => {
  for (const s of [400, 401, 403, 404, 405, 426]) assert.equal(refusalAction(s, null).action, "stop");
  for (const s of [408, 500, 502, 504, 421]) assert.deepEqual(refusalAction(s, "5"), { action: "reconnect", hint: {} });
  assert.deepEqual(refusalAction(503, "3"), { action: "retry_after", hint: { afterMs: 3000 } });
  assert.deepEqual(refusalAction(429, " 1 "), { action: "retry_after", hint: { afterMs: 1000 } });
  // no header, a date, zero or beyond an hour: no hint, so normal backoff
  for (const v of [null, undefined, "", "Wed, 21 Oct 2015 07:28:00 GMT", "0", "3601", "-1", "1.5"]) {
    assert.deepEqual(refusalAction(503, v), { action: "retry_after", hint: {} }, String(v));
  }
});

test("application data that JSON cannot carry is refused before it is queued", () => {
  assert.equal(encodeData({ n: 1 }), '{"n":1}');
  assert.equal(encodeData(null), "null");
  const cyc = {};
  cyc.self = cyc;
  for (const bad of [undefined, () => 1, Symbol("s"), 10n, cyc]) assert.throws(() => encodeData(bad), TypeError);
});

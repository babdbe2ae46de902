// The session core: numbering, cumulative acks, replay, duplicate drop, resume and
// renumbering, driven with the frames a server would send (including wrong ones).
import assert from "node:assert/strict";
import { test } from "node:test";
import { ProtocolError } from "../dist/protocol.js";
import { ClientSession, Inbox, Outbox, OutboxFull, utf8Length } from "../dist/session.js";

const welcome = (sid, resumed, last) => JSON.stringify({ t: "welcome", sid, resumed, last });
const msg = (seq, ack, d = { seq }) => JSON.stringify({ t: "msg", seq, ack, d });
const seqs = (frames) => frames.map((f) => JSON.parse(f)).filter((e) => e.t === "msg").map((e) => e.seq);

test("outbox: numbering, bounds in count and UTF-8 bytes, cumulative acks", () => {
  const box = new Outbox(3, 10);
  assert.equal(box.push('"ab"'), 1);
  assert.equal(box.push('"é"'), 2); // 4 bytes in UTF-8
  assert.equal(box.bytes, 8);
  assert.equal(box.hasRoom(3), false);
  assert.throws(() => box.push('"xy"'), OutboxFull);
  assert.equal(box.ack(1), 1);
  assert.equal(box.ack(1), 0); // a repeated ack is harmless
  assert.equal(box.ack(0), 0); // so is an older one
  assert.equal(box.acked, 1);
  assert.throws(() => box.ack(3), ProtocolError); // never sent
  assert.equal(box.ack(2), 1);
  assert.equal(box.length, 0);
  assert.equal(box.bytes, 0);
  assert.equal(utf8Length("a€𝄞"), 1 + 3 + 4);
});

test("outbox: a long stream compacts without losing order", () => {
  const box = new Outbox(100000, 1 << 30);
  for (let i = 1; i <= 5000; i++) box.push(String(i));
  for (let up = 7; up <= 4900; up += 7) box.ack(up);
  assert.deepEqual(seqs(box.framesAfter(4996, 0)), [4997, 4998, 4999, 5000]);
  assert.equal(box.length, 5000 - 4900);
});

test("inbox: in order once, duplicates dropped, gaps refused", () => {
  const inbox = new Inbox();
  assert.equal(inbox.accept(1), true);
  assert.equal(inbox.accept(1), false);
  assert.equal(inbox.accept(2), true);
  assert.throws(() => inbox.accept(4), ProtocolError);
  assert.equal(inbox.last, 2);
});

test("nothing but hello is written before the welcome; msg before welcome is refused", () => {
  const s = new ClientSession();
  s.push('{"n":1}');
  assert.deepEqual(JSON.parse(s.hello()), { t: "hello", sid: null, last: 0, ack: 0 });
  assert.deepEqual(s.due(), []);
  assert.equal(s.ackLag, 0);
  assert.throws(() => s.receive(msg(1, 0)), ProtocolError);
  assert.throws(() => new ClientSession().receive('{"t":"ack","ack":0}'), ProtocolError);
});

test("a new session writes the queue; replies are delivered once and acked", () => {
  const s = new ClientSession();
  s.push('{"n":1}');
  s.push('{"n":2}');
  s.hello();
  assert.deepEqual(s.receive(welcome("S", false, 0)).outcome, { kind: "new" });
  const frames = s.due();
  assert.deepEqual(seqs(frames), [1, 2]);
  assert.deepEqual(s.due(), []); // written once per connection
  assert.equal(s.awaiting, true);
  const r = s.receive(msg(1, 2, { n: 1, count: 1 }));
  assert.deepEqual(r, { kind: "msg", fresh: true, data: { n: 1, count: 1 }, released: 2 });
  assert.equal(s.awaiting, false);
  assert.equal(s.receive(msg(1, 2)).fresh, false); // a resend
  assert.throws(() => s.receive(msg(3, 2)), ProtocolError); // a gap
});

test("acks for messages never sent are refused, on msg and on ack", () => {
  const s = new ClientSession();
  s.hello();
  s.receive(welcome("S", false, 0));
  s.push("1");
  s.due();
  assert.throws(() => s.receive('{"t":"ack","ack":2}'), ProtocolError);
  assert.throws(() => s.receive(msg(1, 5)), ProtocolError);
});

test("hello and welcome after the welcome are refused", () => {
  const s = new ClientSession();
  s.hello();
  s.receive(welcome("S", false, 0));
  assert.throws(() => s.receive(welcome("S", true, 0)), ProtocolError);
  assert.throws(() => s.receive('{"t":"hello","sid":null,"last":0}'), ProtocolError);
});

function sessionWithTraffic() {
  // 5 sent, server acked 2, 3 replies received
  const s = new ClientSession();
  for (let i = 1; i <= 5; i++) s.push(String(i));
  s.hello();
  s.receive(welcome("S", false, 0));
  s.due();
  s.receive(msg(1, 1));
  s.receive(msg(2, 2));
  s.receive(msg(3, 2));
  s.disconnected();
  return s;
}

test("resume: hello says what was received and acked; the rest is resent with the same seqs", () => {
  const s = sessionWithTraffic();
  assert.deepEqual(JSON.parse(s.hello()), { t: "hello", sid: "S", last: 3, ack: 2 });
  const r = s.receive(welcome("S", true, 4));
  assert.deepEqual(r, { kind: "welcome", outcome: { kind: "resumed" }, released: 2 });
  const frames = s.due();
  assert.deepEqual(seqs(frames), [5]);
  assert.equal(JSON.parse(frames[0]).ack, 3);
  // the server resends what it did not see acked: 3 is a duplicate, 4 is new
  assert.equal(s.receive(msg(3, 4)).fresh, false);
  assert.equal(s.receive(msg(4, 5)).fresh, true);
});

test("resume: welcome.last below an ack already given is a server protocol error", () => {
  const s = sessionWithTraffic();
  s.hello();
  assert.throws(() => s.receive(welcome("S", true, 1)), /below the ack 2/);
});

test("resume: welcome.last beyond what was sent is a server protocol error", () => {
  const s = sessionWithTraffic();
  s.hello();
  assert.throws(() => s.receive(welcome("S", true, 6)), ProtocolError);
});

test("not resumed: unacked messages renumbered from 1, inbox restarted", () => {
  const s = sessionWithTraffic();
  s.hello();
  const r = s.receive(welcome("T", false, 0));
  assert.equal(r.outcome.kind, "not_resumed");
  assert.deepEqual([...r.outcome.renumbered], [[3, 1], [4, 2], [5, 3]]);
  assert.equal(s.sid, "T");
  const frames = s.due();
  assert.deepEqual(seqs(frames), [1, 2, 3]);
  assert.deepEqual(frames.map((f) => JSON.parse(f).d), [3, 4, 5]);
  assert.equal(JSON.parse(frames[0]).ack, 0);
  assert.equal(s.receive(msg(1, 0)).fresh, true); // seq 1 again: a new session
  assert.deepEqual(JSON.parse(s.hello()), { t: "hello", sid: "T", last: 1, ack: 0 });
});

test("a resumed flag for another sid, or for a first hello, is a new session", () => {
  const s = sessionWithTraffic();
  s.hello();
  assert.equal(s.receive(welcome("OTHER", true, 0)).outcome.kind, "not_resumed");
  const fresh = new ClientSession();
  fresh.hello();
  assert.equal(fresh.receive(welcome("X", true, 0)).outcome.kind, "new");
});

test("acks: lag counted from what was received, and withheld beyond recvBuffer unread", () => {
  const s = new ClientSession(1024, 1 << 20, 2);
  s.hello();
  s.receive(welcome("S", false, 0));
  for (let i = 1; i <= 5; i++) s.receive(msg(i, 0));
  // 5 received, none read: 2 may wait unread, so the ack covers 5 - (5 - 2) = 2
  assert.equal(s.ackable, 2);
  assert.deepEqual(s.due(), ['{"t":"ack","ack":2}']);
  assert.equal(s.ackLag, 0);
  s.consumed();
  s.consumed();
  assert.equal(s.ackable, 4);
  assert.equal(s.ackLag, 2);
  // a msg carries the ack; a keepalive repeats it
  s.push("9");
  assert.equal(JSON.parse(s.due()[0]).ack, 4);
  assert.equal(s.keepalive(), '{"t":"ack","ack":4}');
});

test("messages left unread from a lost session are never acked in the new one", () => {
  const s = new ClientSession(1024, 1 << 20, 0);
  s.hello();
  s.receive(welcome("S", false, 0));
  s.receive(msg(1, 0));
  s.receive(msg(2, 0));
  s.disconnected();
  s.hello();
  s.receive(welcome("T", false, 0));
  s.receive(msg(1, 0));
  assert.equal(s.ackable, 0);
  s.consumed(); // the old session's 1
  s.consumed(); // the old session's 2
  assert.equal(s.ackable, 0);
  s.consumed(); // the new session's 1
  assert.equal(s.ackable, 1);
});

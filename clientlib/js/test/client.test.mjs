// The client shell against a scripted server over real loopback sockets: hello and
// welcome, resume and resend, close codes and refusals, timeouts, liveness, the
// send buffer, and the browser's view of a WebSocket.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  Client,
  ClientClosed,
  GaveUp,
  HandshakeRefused,
  SendBufferFull,
  ServerProtocolError,
  TerminalClose,
  Unauthorized,
} from "../dist/index.js";
import { BrowserLikeWebSocket, deadUrl, scriptedServer, sleep, within } from "./peer.mjs";

const fast = { base: 10, cap: 50, defaultWindow: 20, stableAfter: 10_000 };

// Every client a test makes is closed after it, pass or fail, so a failing test
// does not leave a client reconnecting forever.
const clients = new Set();
function client(options) {
  const c = new Client(options);
  clients.add(c);
  return c;
}

async function withServer(opts, fn) {
  const srv = await scriptedServer(opts);
  try {
    await fn(srv);
  } finally {
    await Promise.all([...clients].map((c) => c.close()));
    clients.clear();
    await srv.close();
  }
}

test("hello first, key percent-encoded, token in the Authorization header under ws", async () => {
  await withServer({}, async (srv) => {
    const c = client({ url: `${srv.url}?v=1`, key: "a+b c/é&x", token: "T0K" });
    const started = c.start();
    const p = await srv.accept();
    assert.equal(p.req.url, "/ws?v=1&key=a%2Bb%20c%2F%C3%A9%26x");
    assert.equal(p.req.headers.authorization, "Bearer T0K");
    assert.deepEqual(await p.next(), { t: "hello", sid: null, last: 0, ack: 0 });
    p.welcome("S1");
    await started;
    assert.equal(c.sid, "S1");
    await c.close();
    assert.equal((await p.closed).code, 1000); // the end of the session, for good
  });
});

test("no msg before the welcome; queued messages follow it in order", async () => {
  await withServer({}, async (srv) => {
    const c = client({ url: srv.url, key: "k" });
    for (let i = 1; i <= 3; i++) void c.send({ i });
    void c.start();
    const p = await srv.accept();
    assert.equal((await p.next()).t, "hello");
    await assert.rejects(p.next(200), /no frame/); // nothing until the welcome
    p.welcome("S");
    const got = [await p.next(), await p.next(), await p.next()];
    assert.deepEqual(got.map((e) => [e.t, e.seq, e.d.i]), [["msg", 1, 1], ["msg", 2, 2], ["msg", 3, 3]]);
    await c.close();
  });
});

test("resume after a drop: hello carries last and ack; unacked resent; duplicates dropped", async () => {
  await withServer({}, async (srv) => {
    const events = [];
    const c = client({ url: srv.url, key: "k", backoff: fast });
    c.on("*", (e) => events.push(e.kind));
    void c.start();
    let p = await srv.accept();
    await p.next();
    p.welcome("S");
    for (let i = 1; i <= 3; i++) await c.send(i);
    await p.until("msg");
    await p.next();
    await p.next();
    p.send({ t: "msg", seq: 1, ack: 1, d: "r1" });
    assert.equal(await c.recv(), "r1");
    p.ws.terminate(); // no close frame
    p = await srv.accept();
    assert.deepEqual(await p.next(), { t: "hello", sid: "S", last: 1, ack: 1 });
    p.welcome("S", true, 2); // the server processed 2 as well
    const resent = await p.next();
    assert.deepEqual([resent.seq, resent.d], [3, 3]); // only 3 is resent, with its seq
    p.send({ t: "msg", seq: 1, ack: 3, d: "r1" }); // a resend the client already has
    p.send({ t: "msg", seq: 2, ack: 3, d: "r2" });
    assert.equal(await c.recv(), "r2");
    assert.equal(c.stats.duplicates, 1);
    assert.equal(c.stats.resumes, 1);
    assert.equal(c.pending, 0);
    assert.deepEqual(events, ["connected", "disconnected", "resumed", "connected"]);
    await c.close();
  });
});

test("moved: reconnects within the hinted window and reports it", async () => {
  await withServer({}, async (srv) => {
    const events = [];
    const c = client({ url: srv.url, key: "k", backoff: fast });
    c.on("*", (e) => events.push([e.kind, e.code]));
    void c.start();
    let p = await srv.accept();
    await p.next();
    p.welcome("S");
    await sleep(20);
    p.ws.close(4000, '{"window_ms":30}');
    p = await srv.accept(2000);
    assert.equal((await p.next()).sid, "S");
    p.welcome("S", true, 0);
    await sleep(20);
    assert.deepEqual(events.slice(0, 4), [["connected", null], ["disconnected", 4000], ["moved", 4000], ["resumed", null]]);
    await c.close();
  });
});

test("no welcome within connectTimeout: a new attempt, never fatal", async () => {
  await withServer({}, async (srv) => {
    const c = client({ url: srv.url, key: "k", connectTimeout: 200, backoff: fast });
    const started = c.start();
    const silent = await srv.accept();
    await silent.next(); // hello, never answered
    const p = await srv.accept(3000);
    await p.next();
    p.welcome("S");
    await started;
    assert.equal(c.stats.connects, 1);
    await c.close();
  });
});

for (const [code, cls] of [
  [4500, Unauthorized],
  [4502, TerminalClose],
  [4503, TerminalClose],
  [1008, TerminalClose],
  [1000, TerminalClose],
]) {
  test(`close ${code} stops the client with ${cls.name}`, async () => {
    await withServer({}, async (srv) => {
      const c = client({ url: srv.url, key: "k", backoff: fast });
      let stopped = null;
      c.on("stopped", (e) => (stopped = e.error));
      const started = c.start();
      const p = await srv.accept();
      await p.next();
      p.welcome("S");
      await started;
      p.ws.close(code, "");
      await assert.rejects(within(c.recv()), cls);
      await assert.rejects(c.send(1), cls);
      assert.ok(stopped instanceof cls);
      assert.equal(c.state, "stopped");
      await assert.rejects(srv.accept(300)); // no reconnect
    });
  });
}

test("HTTP refusals under ws: 401 Unauthorized, 403 HandshakeRefused with the body", async () => {
  let status = 401;
  await withServer({ refuse: () => ({ status, body: "token does not allow this key\n" }) }, async (srv) => {
    await assert.rejects(client({ url: srv.url, key: "k" }).start(), Unauthorized);
    status = 403;
    await assert.rejects(client({ url: srv.url, key: "k" }).start(), (e) => {
      assert.ok(e instanceof HandshakeRefused);
      assert.equal(e.status, 403);
      assert.match(e.message, /token does not allow this key/);
      return true;
    });
    assert.equal(srv.requests.length, 2); // neither retried
  });
});

test("HTTP 503 with Retry-After is honoured, then the client connects", async () => {
  let refusals = 1;
  await withServer({ refuse: () => (refusals-- > 0 ? { status: 503, headers: { "Retry-After": "1" } } : null) }, async (srv) => {
    const c = client({ url: srv.url, key: "k", rand: () => 0, backoff: fast });
    const t0 = performance.now();
    void c.start();
    const p = await srv.accept(5000);
    // the hint said 1 s; the client's own backoff would have been 0 ms (rand 0)
    assert.ok(performance.now() - t0 >= 950, "came back before Retry-After");
    await p.next();
    p.welcome("S");
    await c.close();
  });
});

test("a server that breaks the protocol: ServerProtocolError, closed with 4502", async () => {
  const resumed = (p) => p.welcome("S", true, 1);
  for (const bad of [
    (p) => p.welcome("S", true, 0), // resumed, but below the ack 1 it already gave
    (p) => p.welcome("S", true, 2), // resumed, beyond what was sent
    (p) => p.send({ t: "msg", seq: 1, ack: 0, d: null }), // msg instead of welcome
    (p) => [resumed(p), p.send({ t: "msg", seq: 2, ack: 1, d: null })], // a gap
    (p) => [resumed(p), p.send({ t: "ack", ack: 99 })], // an ack for a message never sent
    (p) => [resumed(p), p.ws.send("{not json")],
    (p) => [resumed(p), resumed(p)], // a second welcome
  ]) {
    await withServer({}, async (srv) => {
      const c = client({ url: srv.url, key: "k", backoff: fast });
      void c.start();
      let p = await srv.accept();
      await p.next();
      p.welcome("S");
      await c.send(1);
      await p.next();
      p.send({ t: "ack", ack: 1 });
      await sleep(20);
      p.ws.terminate();
      p = await srv.accept();
      await p.next();
      bad(p);
      await assert.rejects(within(c.recv()), ServerProtocolError);
      assert.equal((await p.closed).code, 4502);
    });
  }
});

test("dead connection: unacked messages and silence for heartbeatTimeout -> dropped and resumed", async () => {
  await withServer({}, async (srv) => {
    const events = [];
    const c = client({ url: srv.url, key: "k", heartbeatInterval: 60_000, heartbeatTimeout: 300, backoff: fast });
    c.on("disconnected", (e) => events.push(e.reason));
    void c.start();
    let p = await srv.accept();
    await p.next();
    p.welcome("S");
    const acked = c.send("x", { waitAck: true });
    await p.next(); // received, never acked: the server has hung
    p = await srv.accept(3000);
    assert.deepEqual(await p.next(), { t: "hello", sid: "S", last: 0, ack: 0 });
    p.welcome("S", true, 0);
    assert.equal((await p.next()).seq, 1);
    p.send({ t: "ack", ack: 1 });
    await acked;
    assert.match(events[0], /heartbeatTimeout/);
    await c.close();
  });
});

test("idle under ws: a ping that gets no pong within heartbeatTimeout -> reconnect", async () => {
  await withServer({ autoPong: false }, async (srv) => {
    const c = client({ url: srv.url, key: "k", heartbeatInterval: 100, heartbeatTimeout: 300, backoff: fast });
    void c.start();
    const p = await srv.accept();
    await p.next();
    p.welcome("S");
    const again = await srv.accept(3000);
    assert.equal((await again.next()).sid, "S");
    await c.close();
  });
});

test("browser WebSocket API: token in the query, keepalive acks when idle", async () => {
  await withServer({}, async (srv) => {
    const c = client({ url: srv.url, key: "k", token: "a b", WebSocket: BrowserLikeWebSocket, heartbeatInterval: 100 });
    void c.start();
    const p = await srv.accept();
    assert.equal(p.req.url, "/ws?key=k&token=a%20b");
    assert.equal(p.req.headers.authorization, undefined);
    await p.next();
    p.welcome("S");
    p.send({ t: "msg", seq: 1, ack: 0, d: "hi" });
    assert.equal(await c.recv(), "hi");
    assert.deepEqual(await p.next(), { t: "ack", ack: 1 }); // within ackDelay
    assert.deepEqual(await p.next(1000), { t: "ack", ack: 1 }); // the keepalive repeats it
    await c.close();
  });
});

test("browser WebSocket API: a refused upgrade is retried (the status is not visible)", async () => {
  await withServer({ refuse: () => ({ status: 401 }) }, async (srv) => {
    const c = client({ url: srv.url, key: "k", WebSocket: BrowserLikeWebSocket, backoff: fast, giveUpAfter: 400 });
    await assert.rejects(c.start(), GaveUp);
    assert.ok(srv.requests.length >= 2);
  });
});

test("send buffer: onFull throw raises SendBufferFull; wait resumes in order as acks arrive", async () => {
  await withServer({}, async (srv) => {
    const strict = client({ url: srv.url, key: "k", maxPending: 2, onFull: "throw" });
    await strict.send(1);
    await strict.send(2);
    await assert.rejects(strict.send(3), SendBufferFull);
    await assert.rejects(strict.send("x".repeat(2 << 20)), RangeError);
    await strict.close();

    const c = client({ url: srv.url, key: "k", maxPending: 2 });
    void c.start();
    const p = await srv.accept();
    await p.next();
    p.welcome("S");
    const seqs = [];
    const sends = [1, 2, 3, 4, 5].map((i) => c.send(i).then((s) => seqs.push([i, s])));
    assert.deepEqual([(await p.next()).seq, (await p.next()).seq], [1, 2]);
    assert.equal(c.pending, 5);
    p.send({ t: "ack", ack: 2 });
    assert.deepEqual([(await p.next()).d, (await p.next()).d], [3, 4]);
    p.send({ t: "ack", ack: 4 });
    assert.equal((await p.next()).d, 5);
    await Promise.all(sends);
    assert.deepEqual(seqs, [[1, 1], [2, 2], [3, 3], [4, 4], [5, 5]]);
    await c.close();
  });
});

test("close() fails what waits with ClientClosed and ends iteration", async () => {
  await withServer({}, async (srv) => {
    const c = client({ url: srv.url, key: "k" });
    void c.start();
    const p = await srv.accept();
    await p.next();
    p.welcome("S");
    const acked = c.send(1, { waitAck: true }).catch((e) => e);
    const iter = (async () => {
      const got = [];
      for await (const m of c) got.push(m);
      return got;
    })();
    p.send({ t: "msg", seq: 1, ack: 0, d: "only" });
    await sleep(50);
    await c.close();
    assert.ok((await acked) instanceof ClientClosed);
    assert.deepEqual(await iter, ["only"]);
    await assert.rejects(c.send(2), ClientClosed);
  });
});

test("not resumed: renumbered from 1, waitAck follows the new seq, not_resumed reported", async () => {
  await withServer({}, async (srv) => {
    const events = [];
    const c = client({ url: srv.url, key: "k", backoff: fast });
    c.on("*", (e) => events.push(e.kind));
    void c.start();
    let p = await srv.accept();
    await p.next();
    p.welcome("S");
    await c.send("a");
    const b = c.send("b", { waitAck: true });
    await p.next();
    await p.next();
    p.send({ t: "ack", ack: 1 });
    await sleep(20);
    p.ws.terminate();
    p = await srv.accept();
    await p.next();
    p.welcome("T", false, 0);
    const m = await p.next();
    assert.deepEqual([m.seq, m.d], [1, "b"]);
    p.send({ t: "ack", ack: 1 });
    await b;
    assert.equal(c.sid, "T");
    assert.equal(c.stats.notResumed, 1);
    assert.ok(events.includes("not_resumed"));
    await c.close();
  });
});

test("several gateways: a dead one is skipped, giveUpAfter stops a hopeless client", async () => {
  const dead = await deadUrl();
  await withServer({}, async (srv) => {
    const c = client({ url: [dead, srv.url], key: "k", rand: () => 0, backoff: fast });
    const started = c.start();
    const p = await srv.accept(3000);
    await p.next();
    p.welcome("S");
    await started;
    await c.close();
  });
  const hopeless = new Client({ url: [dead], key: "k", backoff: fast, giveUpAfter: 300 });
  await assert.rejects(hopeless.start(), GaveUp);
});

test("wake('online') cuts a plain backoff short but keeps a server's hint", async () => {
  await withServer({}, async (srv) => {
    const c = client({ url: srv.url, key: "k", rand: () => 0.99, backoff: { ...fast, base: 20_000, cap: 20_000 } });
    void c.start();
    let p = await srv.accept();
    await p.next();
    p.welcome("S");
    await sleep(20);
    p.ws.close(1011); // reconnect with backoff: ~20 s here
    await sleep(50);
    c.wake("online");
    p = await srv.accept(1000);
    await p.next();
    p.welcome("S", true, 0);
    await sleep(20);
    p.ws.close(1013, '{"after_ms":5000}'); // the server asks for 5 s
    await sleep(50);
    c.wake("online");
    await assert.rejects(srv.accept(300));
    await c.close();
  });
});

test("a listener that closes the client when disconnected stops it for good", async () => {
  await withServer({}, async (srv) => {
    const c = client({ url: srv.url, key: "k", backoff: fast });
    c.on("disconnected", () => void c.close());
    void c.start();
    const p = await srv.accept();
    await p.next();
    p.welcome("S");
    await sleep(20);
    p.ws.terminate();
    await assert.rejects(srv.accept(300)); // no reconnect
    assert.equal(c.state, "stopped");
  });
});

test("binary frames holding JSON are accepted; invalid UTF-8 is a protocol error", async () => {
  for (const ws of [undefined, BrowserLikeWebSocket]) {
    await withServer({}, async (srv) => {
      const c = client({ url: srv.url, key: "k", ...(ws ? { WebSocket: ws } : {}) });
      void c.start();
      const p = await srv.accept();
      await p.next();
      p.welcome("S");
      p.ws.send(Buffer.from('{"t":"msg","seq":1,"ack":0,"d":"b\u00e9"}'), { binary: true });
      assert.equal(await within(c.recv()), "bé");
      p.ws.send(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), { binary: true });
      await assert.rejects(within(c.recv()), ServerProtocolError);
      assert.equal((await p.closed).code, 4502);
    });
  }
});

test("options are checked", () => {
  assert.throws(() => client({ url: "http://x/ws", key: "k" }), TypeError);
  assert.throws(() => client({ url: "ws://x/ws", key: "" }), TypeError);
  assert.throws(() => client({ url: "ws://x/ws", key: "a\nb" }), TypeError);
  assert.throws(() => client({ url: "ws://x/ws", key: "x".repeat(257) }), TypeError);
  assert.throws(() => client({ url: [], key: "k" }), TypeError);
  assert.throws(() => client({ url: "ws://x/ws", key: "k", maxPending: 0 }), RangeError);
  assert.throws(() => client({ url: "ws://x/ws", key: "k", onFull: "drop" }), TypeError);
  assert.throws(() => client({ url: "ws://x/ws", key: "k", backoff: { base: 0 } }), RangeError);
});

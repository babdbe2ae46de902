// Scenarios the end-to-end tests run with the JS client, unchanged in Node and in
// Chromium. Each gets the library module, an `io` to talk to the test (io.mark(name)
// tells the test to do something, e.g. move the key, and resolves when it is done)
// and its arguments; it returns plain JSON for the test to check.

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const STALL_MS = 20_000;

/**
 * Counter-app stream: send {n: 1..n} on `key`, read every reply. Faults are
 * requested at their `at` (fired while traffic is in flight, not waited for), and
 * each is waited for before the next one, and before the last fifth of the stream,
 * so that traffic also runs after it.
 */
async function streamOne(lib, io, { url, key, n, faults = [], options = {} }) {
  const client = new lib.Client({ url, key, ...options });
  const events = [];
  client.on("*", (e) => events.push({ kind: e.kind, code: e.code, reason: e.reason }));
  await client.start();
  const got = [];
  let progress = Date.now();
  const reading = (async () => {
    // Until the reply to the last message: a duplicate or a loss shows in the result.
    for await (const m of client) {
      got.push(m);
      progress = Date.now();
      if (m?.n === n || got.length >= 2 * n) return;
    }
  })();
  // A stream that stops moving fails at once, with what it had, instead of at the test's timeout.
  let watchdog;
  const stalled = new Promise((_, reject) => {
    watchdog = setInterval(() => {
      if (Date.now() - progress < STALL_MS) return;
      const last = got.at(-1);
      reject(new Error(`${key}: no reply for ${STALL_MS} ms after ${got.length} (last ${JSON.stringify(last)}); ` +
        `stats ${JSON.stringify(client.stats)}; events ${JSON.stringify(events)}`));
    }, 500);
  });
  const reader = Promise.race([reading, stalled]).finally(() => clearInterval(watchdog));
  reader.catch(() => {}); // observed below; a send may fail first
  const pending = [];
  const waitPoints = [...faults.slice(1).map((f) => f.at), n - Math.floor(n / 5)];
  for (let i = 1; i <= n; i++) {
    await Promise.race([client.send({ n: i }), reader.then(() => {})]);
    const f = faults.find((x) => x.at === i);
    if (f) pending.push(io.mark(f.name));
    if (waitPoints.includes(i) && pending.length) await pending.shift();
    if (i % 200 === 0) await sleep(5); // let faults interleave with traffic in flight
  }
  await Promise.all(pending);
  await reader;
  const stats = { ...client.stats };
  await client.close();
  return { key, ns: got.map((m) => m.n), counts: got.map((m) => m.count), stats, events };
}

export async function stream(lib, io, args) {
  return streamOne(lib, io, args);
}

/** Several keys at once, one client each; only the first key's stream requests faults. */
export async function streams(lib, io, { keys, ...args }) {
  return Promise.all(
    keys.map((key, i) => streamOne(lib, io, { ...args, key, faults: i === 0 ? args.faults : [] })),
  );
}

/** Start a client and report how it ended (for refusals): the error's class and message. */
export async function attempt(lib, io, { url, key, options = {} }) {
  const client = new lib.Client({ url, key, ...options });
  const events = [];
  client.on("*", (e) => events.push({ kind: e.kind, code: e.code }));
  try {
    await client.start();
    await client.send({ n: 1 }, { waitAck: true });
    const reply = await client.recv();
    await client.close();
    return { ok: true, reply, events };
  } catch (e) {
    await client.close();
    return { ok: false, error: e.name, message: e.message, events };
  }
}

/** The documented chat page (already loaded): say `text`, wait until the room shows it. */
export async function chatPage(lib, io, { text }) {
  const $ = (sel) => document.querySelector(sel);
  const until = async (cond, what) => {
    for (let i = 0; !cond(); i++) {
      if (i > 400) throw new Error(`${what}; the page shows: ${document.body.innerText}`);
      await sleep(50);
    }
  };
  await until(() => $("#status").textContent === "connected", "never connected");
  $("#text").value = text;
  $("#say button").click();
  await until(() => $("#log").textContent.includes(text), "the message never came back");
  return { log: [...document.querySelectorAll("#log li")].map((li) => li.textContent) };
}

// A scripted server for the client shell's tests: a real WebSocket server (ws) on
// loopback whose every connection is handed to the test, which plays the server's
// side of the session protocol frame by frame, or refuses the upgrade over HTTP.
import { createServer } from "node:http";
import { WebSocket, WebSocketServer } from "ws";

export class Peer {
  constructor(ws, req) {
    this.ws = ws;
    this.req = req;
    this.frames = [];
    this.waiters = [];
    this.closed = new Promise((resolve) => ws.on("close", (code, reason) => resolve({ code, reason: String(reason) })));
    ws.on("message", (data) => {
      const env = JSON.parse(String(data));
      const w = this.waiters.shift();
      if (w) w(env);
      else this.frames.push(env);
    });
  }
  /** The next envelope from the client. */
  next(ms = 3000) {
    if (this.frames.length) return Promise.resolve(this.frames.shift());
    return new Promise((resolve, reject) => {
      const w = (env) => {
        clearTimeout(t);
        resolve(env);
      };
      const t = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        reject(new Error("no frame from the client"));
      }, ms);
      this.waiters.push(w);
    });
  }
  /** Envelopes until one of type t (returning those before it too). */
  async until(t, ms) {
    const seen = [];
    for (;;) {
      const env = await this.next(ms);
      seen.push(env);
      if (env.t === t) return seen;
    }
  }
  send(env) {
    this.ws.send(JSON.stringify(env));
  }
  welcome(sid, resumed = false, last = 0) {
    this.send({ t: "welcome", sid, resumed, last });
  }
}

/**
 * Listen on loopback. `refuse(req)` may return {status, headers, body} to answer the
 * upgrade with an HTTP error. Connections arrive through `await server.accept()`.
 */
export async function scriptedServer({ refuse, autoPong = true } = {}) {
  const http = createServer();
  const wss = new WebSocketServer({ noServer: true, autoPong });
  const queue = [];
  const acceptors = [];
  const requests = [];
  http.on("upgrade", (req, socket, head) => {
    requests.push(req);
    const r = refuse?.(req);
    if (r) {
      const body = r.body ?? "";
      const headers = Object.entries(r.headers ?? {}).map(([k, v]) => `${k}: ${v}\r\n`).join("");
      socket.end(
        `HTTP/1.1 ${r.status} Refused\r\n${headers}Content-Type: text/plain\r\n` +
          `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
      );
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      const peer = new Peer(ws, req);
      const a = acceptors.shift();
      if (a) a(peer);
      else queue.push(peer);
    });
  });
  await new Promise((resolve) => http.listen(0, "127.0.0.1", resolve));
  const port = http.address().port;
  return {
    url: `ws://127.0.0.1:${port}/ws`,
    requests,
    accept(ms = 5000) {
      if (queue.length) return Promise.resolve(queue.shift());
      return new Promise((resolve, reject) => {
        const a = (p) => {
          clearTimeout(t);
          resolve(p);
        };
        const t = setTimeout(() => {
          acceptors.splice(acceptors.indexOf(a), 1);
          reject(new Error("no connection from the client"));
        }, ms);
        acceptors.push(a);
      });
    },
    async close() {
      for (const c of wss.clients) c.terminate();
      await new Promise((resolve) => http.close(resolve));
      http.closeAllConnections?.();
    },
  };
}

/** A port with nothing listening on it. */
export async function deadUrl() {
  const http = createServer();
  await new Promise((resolve) => http.listen(0, "127.0.0.1", resolve));
  const port = http.address().port;
  await new Promise((resolve) => http.close(resolve));
  return `ws://127.0.0.1:${port}/ws`;
}

/**
 * The browser's WebSocket API on top of ws, without ws's extras (headers, pings,
 * HTTP statuses): what the client gets in a browser.
 */
export class BrowserLikeWebSocket {
  constructor(url) {
    this.inner = new WebSocket(url);
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    this.inner.onopen = (e) => this.onopen?.(e);
    this.inner.onmessage = (e) => this.onmessage?.({ data: e.data });
    this.inner.onclose = (e) => this.onclose?.({ code: e.code, reason: e.reason });
    this.inner.onerror = (e) => this.onerror?.(e);
  }
  get readyState() {
    return this.inner.readyState;
  }
  get binaryType() {
    return this.inner.binaryType;
  }
  set binaryType(v) {
    this.inner.binaryType = v;
  }
  send(s) {
    this.inner.send(s);
  }
  close(code, reason) {
    this.inner.close(code, reason);
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** `p`, or a rejection after `ms`: a test that waits for the client fails instead of hanging. */
export function within(p, ms = 3000) {
  let t;
  const timeout = new Promise((_, reject) => {
    t = setTimeout(() => reject(new Error(`nothing happened within ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(t));
}

// Hand-made clients for what socket.io-client will not do on purpose: never answer a ping,
// stop reading, send malformed packets or oversized frames.
//
// `RawWebSocket` speaks RFC 6455 over a plain `net` socket, masking every frame as a client
// must ("a client MUST mask all frames that it sends to the server", RFC 6455 §5.1).
// `wsTransport` wraps the `ws` package behind the same small interface. `EioClient` adds
// Engine.IO v4 / Socket.IO v5 on top: open packet, CONNECT with auth, ping/pong, events.

import { randomBytes } from "node:crypto";
import { EventEmitter } from "node:events";
import net from "node:net";

import WebSocket from "ws";

/** Path of the Engine.IO WebSocket endpoint. */
export const EIO_PATH = "/socket.io/?EIO=4&transport=websocket";

/** WebSocket opcodes (RFC 6455 §5.2). */
export const OP = { continuation: 0, text: 1, binary: 2, close: 8, ping: 9, pong: 10 };

/** Encodes one client frame (masked unless `mask: false`). */
export function encodeFrame(opcode, payload, { fin = true, mask = true } = {}) {
  const data = Buffer.isBuffer(payload) ? payload : Buffer.from(payload ?? "", "utf8");
  const len = data.length;
  let head;
  if (len < 126) {
    head = Buffer.alloc(2);
    head[1] = len;
  } else if (len < 65536) {
    head = Buffer.alloc(4);
    head[1] = 126;
    head.writeUInt16BE(len, 2);
  } else {
    head = Buffer.alloc(10);
    head[1] = 127;
    head.writeBigUInt64BE(BigInt(len), 2);
  }
  head[0] = (fin ? 0x80 : 0) | opcode;
  if (!mask) return Buffer.concat([head, data]);
  head[1] |= 0x80;
  const key = randomBytes(4);
  const body = Buffer.allocUnsafe(len);
  for (let i = 0; i < len; i++) body[i] = data[i] ^ key[i & 3];
  return Buffer.concat([head, key, body]);
}

/** Incremental frame decoder: push bytes, get whole frames. */
export class FrameReader {
  constructor() {
    this.buf = Buffer.alloc(0);
  }

  /** Appends `chunk` and returns every complete frame `{fin, opcode, payload}`. */
  push(chunk) {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    const frames = [];
    for (;;) {
      const b = this.buf;
      if (b.length < 2) break;
      const masked = (b[1] & 0x80) !== 0;
      let len = b[1] & 0x7f;
      let off = 2;
      if (len === 126) {
        if (b.length < 4) break;
        len = b.readUInt16BE(2);
        off = 4;
      } else if (len === 127) {
        if (b.length < 10) break;
        len = Number(b.readBigUInt64BE(2));
        off = 10;
      }
      const keyOff = off;
      if (masked) off += 4;
      if (b.length < off + len) break;
      let payload = b.subarray(off, off + len);
      if (masked) {
        const key = b.subarray(keyOff, keyOff + 4);
        payload = Buffer.from(payload.map((x, i) => x ^ key[i & 3]));
      }
      frames.push({ fin: (b[0] & 0x80) !== 0, opcode: b[0] & 0x0f, payload: Buffer.from(payload) });
      this.buf = b.subarray(off + len);
    }
    return frames;
  }
}

/**
 * Connects with `net`, sends `head` (a string or Buffer) and collects everything the server
 * sends until it closes. Resolves `{data, error}` on close; rejects after `timeoutMs`.
 */
export function tcpExchange(port, head, { host = "127.0.0.1", timeoutMs = 5000 } = {}) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host, port });
    const chunks = [];
    let error = null;
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`server neither answered nor closed within ${timeoutMs} ms`));
    }, timeoutMs);
    sock.on("connect", () => {
      if (head !== undefined && head !== null) sock.write(head);
    });
    sock.on("data", (c) => chunks.push(c));
    sock.on("error", (e) => {
      error = e;
    });
    sock.on("close", () => {
      clearTimeout(timer);
      resolve({ data: Buffer.concat(chunks), error, socket: sock });
    });
  });
}

/** A WebSocket client over a plain TCP socket, frames written by hand. */
export class RawWebSocket extends EventEmitter {
  /**
   * Performs the HTTP upgrade and resolves with the open RawWebSocket.
   * @param {number} port
   * @param {object} [o]
   * @param {string} [o.path=EIO_PATH]
   * @param {Record<string,string>} [o.headers] extra request headers
   * @param {boolean} [o.autoPong=true] answer WebSocket-level pings
   */
  static connect(port, { host = "127.0.0.1", path = EIO_PATH, headers = {}, timeoutMs = 5000, autoPong = true } = {}) {
    return new Promise((resolve, reject) => {
      const sock = net.connect({ host, port });
      const key = randomBytes(16).toString("base64");
      let head = Buffer.alloc(0);
      const timer = setTimeout(() => {
        sock.destroy();
        reject(new Error(`no WebSocket upgrade answer within ${timeoutMs} ms`));
      }, timeoutMs);
      const fail = (err) => {
        clearTimeout(timer);
        sock.destroy();
        reject(err);
      };
      sock.on("error", fail);
      sock.on("close", () => fail(new Error(`closed during the upgrade: ${head.toString("latin1")}`)));
      sock.on("connect", () => {
        const lines = [
          `GET ${path} HTTP/1.1`,
          `Host: ${host}:${port}`,
          "Upgrade: websocket",
          "Connection: Upgrade",
          `Sec-WebSocket-Key: ${key}`,
          "Sec-WebSocket-Version: 13",
          ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
        ];
        sock.write(`${lines.join("\r\n")}\r\n\r\n`);
      });
      const onData = (chunk) => {
        head = Buffer.concat([head, chunk]);
        const end = head.indexOf("\r\n\r\n");
        if (end < 0) return;
        clearTimeout(timer);
        sock.off("data", onData);
        sock.removeAllListeners("error");
        sock.removeAllListeners("close");
        const status = head.subarray(0, end).toString("latin1");
        if (!/^HTTP\/1\.1 101/.test(status)) {
          sock.destroy();
          reject(new Error(`upgrade refused: ${status}`));
          return;
        }
        resolve(new RawWebSocket(sock, head.subarray(end + 4), { autoPong }));
      };
      sock.on("data", onData);
    });
  }

  constructor(sock, rest, { autoPong }) {
    super();
    this.socket = sock;
    this.reader = new FrameReader();
    this.autoPong = autoPong;
    this.fragments = null;
    this.closeFrame = null;
    this.error = null;
    this.closed = new Promise((resolve) => {
      sock.on("close", () => {
        this.emit("closed", this.closeFrame);
        resolve(this.closeFrame);
      });
    });
    sock.on("error", (e) => {
      this.error = e;
    });
    sock.on("data", (c) => this.onBytes(c));
    this.backlog = [];
    this.consumer = null;
    if (rest.length) this.onBytes(rest);
  }

  // The server speaks first (the Engine.IO open packet may share a TCP read with the 101
  // response), so messages wait in a backlog until a consumer attaches.
  deliver(kind, data) {
    if (this.consumer) this.consumer(kind, data);
    else this.backlog.push([kind, data]);
  }

  /** Starts delivering "text"/"binary" messages to `fn(kind, data)`, backlog first. */
  attach(fn) {
    this.consumer = fn;
    for (const [kind, data] of this.backlog.splice(0)) fn(kind, data);
  }

  onBytes(chunk) {
    for (const f of this.reader.push(chunk)) {
      if (f.opcode === OP.ping) {
        if (this.autoPong) this.sendFrame(OP.pong, f.payload);
      } else if (f.opcode === OP.close) {
        const code = f.payload.length >= 2 ? f.payload.readUInt16BE(0) : null;
        this.closeFrame = { code, reason: f.payload.subarray(2).toString("utf8") };
        this.emit("close-frame", this.closeFrame);
      } else if (f.opcode === OP.text || f.opcode === OP.binary || f.opcode === OP.continuation) {
        this.fragments = this.fragments ? Buffer.concat([this.fragments, f.payload]) : f.payload;
        if (f.opcode !== OP.continuation) this.fragmentOp = f.opcode;
        if (!f.fin) continue;
        const whole = this.fragments;
        this.fragments = null;
        if (this.fragmentOp === OP.text) this.deliver("text", whole.toString("utf8"));
        else this.deliver("binary", whole);
      }
    }
  }

  /** Writes one frame; false when the socket is already gone. */
  sendFrame(opcode, payload, opts) {
    if (this.socket.destroyed) return false;
    return this.socket.write(encodeFrame(opcode, payload, opts));
  }

  /** Sends a text frame. */
  sendText(text) {
    return this.sendFrame(OP.text, text);
  }

  /** Sends a binary frame. */
  sendBinary(buf) {
    return this.sendFrame(OP.binary, buf);
  }

  /** Stops reading: bytes pile up in the kernel, then in the server's outbound queue. */
  pause() {
    this.socket.pause();
  }

  /** Reads again. */
  resume() {
    this.socket.resume();
  }

  /** Drops the TCP connection. */
  destroy() {
    this.socket.destroy();
  }

  /** True once the TCP connection is closed. */
  get isClosed() {
    return this.socket.destroyed || this.socket.closed;
  }
}

/** The same interface as RawWebSocket, on top of the `ws` package. */
export function wsTransport(url, { headers = {}, ca, timeoutMs = 5000 } = {}) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url.replace(/^http/, "ws") + EIO_PATH, { headers, ca, maxPayload: 0 });
    const t = new EventEmitter();
    t.ws = ws;
    t.closeFrame = null;
    t.error = null;
    t.closed = new Promise((res) => {
      ws.on("close", (code, reason) => {
        t.closeFrame = { code, reason: reason.toString("utf8") };
        t.emit("closed", t.closeFrame);
        res(t.closeFrame);
      });
    });
    t.sendText = (s) => ws.readyState === WebSocket.OPEN && (ws.send(s), true);
    t.sendBinary = (b) => ws.readyState === WebSocket.OPEN && (ws.send(b, { binary: true }), true);
    t.destroy = () => ws.terminate();
    Object.defineProperty(t, "isClosed", { get: () => ws.readyState === WebSocket.CLOSED });
    // 'open' and the first 'message' can fire in one tick, before the caller can listen:
    // keep messages in a backlog until attach().
    t.backlog = [];
    t.consumer = null;
    t.attach = (fn) => {
      t.consumer = fn;
      for (const [kind, data] of t.backlog.splice(0)) fn(kind, data);
    };
    ws.on("message", (data, isBinary) => {
      const msg = isBinary ? ["binary", data] : ["text", data.toString("utf8")];
      if (t.consumer) t.consumer(...msg);
      else t.backlog.push(msg);
    });
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error(`ws: no open within ${timeoutMs} ms`));
    }, timeoutMs);
    ws.on("open", () => {
      clearTimeout(timer);
      resolve(t);
    });
    ws.on("error", (e) => {
      t.error = e;
      clearTimeout(timer);
      reject(e);
    });
  });
}

/**
 * Engine.IO v4 + Socket.IO v5 over a transport (RawWebSocket or wsTransport).
 * Records every text packet in `texts`; `answerPings` controls the "2" -> "3" reply.
 */
export class EioClient extends EventEmitter {
  constructor(transport, { answerPings = true } = {}) {
    super();
    this.t = transport;
    this.answerPings = answerPings;
    this.texts = [];
    this.pings = 0;
    this.events = [];
    this.acks = new Map();
    this.nextAck = 1;
    this.closed = transport.closed;
    transport.attach((kind, data) => (kind === "text" ? this.onText(data) : this.emit("binary", data)));
  }

  onText(s) {
    this.texts.push(s);
    if (s === "2") {
      this.pings++;
      if (this.answerPings) this.t.sendText("3");
      this.emit("ping");
    } else if (s.startsWith("42")) {
      const body = s.slice(2).replace(/^\d+/, "");
      try {
        const [name, ...args] = JSON.parse(body);
        this.events.push({ name, args });
        this.emit("event", name, ...args);
      } catch {
        this.emit("garbage", s);
      }
    } else if (s.startsWith("43")) {
      const m = /^43(\d+)(.*)$/s.exec(s);
      if (m) {
        const cb = this.acks.get(Number(m[1]));
        this.acks.delete(Number(m[1]));
        if (cb) cb(JSON.parse(m[2]));
      }
    }
    this.emit("text", s);
  }

  /** Resolves with the first text packet matching `re`; rejects on close or timeout. */
  waitText(re, timeoutMs = 5000) {
    const found = this.texts.find((s) => re.test(s));
    if (found !== undefined) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`no packet matching ${re} within ${timeoutMs} ms; got ${JSON.stringify(this.texts.slice(-5))}`));
      }, timeoutMs);
      const onText = (s) => {
        if (re.test(s)) {
          cleanup();
          resolve(s);
        }
      };
      const onClosed = () => {
        cleanup();
        reject(new Error(`closed before a packet matching ${re}; got ${JSON.stringify(this.texts.slice(-5))}`));
      };
      const cleanup = () => {
        clearTimeout(timer);
        this.off("text", onText);
        this.t.off("closed", onClosed);
      };
      this.on("text", onText);
      this.t.on("closed", onClosed);
    });
  }

  /** Waits for the Engine.IO open packet, sends CONNECT with `auth`, returns the reply packet. */
  async handshake(auth, timeoutMs = 5000) {
    const open = await this.waitText(/^0\{/, timeoutMs);
    this.open = JSON.parse(open.slice(1));
    this.t.sendText(`40${JSON.stringify(auth)}`);
    const reply = await this.waitText(/^4[04]/, timeoutMs);
    if (!reply.startsWith("40")) throw new Error(`CONNECT refused: ${reply}`);
    return JSON.parse(reply.slice(2));
  }

  /** Sends `42["name", data]` (with an ack id when `ack` is a function). */
  emitEvent(name, data, ack) {
    let id = "";
    if (ack) {
      id = String(this.nextAck++);
      this.acks.set(Number(id), ack);
    }
    return this.t.sendText(`42${id}${JSON.stringify([name, data])}`);
  }

  /** Sends a raw text frame. */
  sendText(s) {
    return this.t.sendText(s);
  }
}

/** Opens a raw Socket.IO connection for `token` in `workspaceId`. */
export async function rawSocketIo(server, { token, workspaceId, answerPings = true, transport = "net" } = {}) {
  const t =
    transport === "ws"
      ? await wsTransport(server.url, { ca: server.ca })
      : await RawWebSocket.connect(server.port, { host: server.host });
  const client = new EioClient(t, { answerPings });
  try {
    client.connectReply = await client.handshake({ token, workspaceId });
  } catch (err) {
    t.destroy();
    throw err;
  }
  return client;
}

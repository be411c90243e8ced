// A small Socket.IO client, written for the demo page: Engine.IO v4 and Socket.IO v5 text
// packets over one WebSocket (no long-polling, no binary attachments, main namespace only).
//
//   const socket = new Socket(location.origin, { auth: { token, workspaceId } });
//   socket.on("state", (state) => ...);        // connecting | connected | reconnecting | refused | closed
//   socket.on("connect", ({ recovered }) => ...);
//   socket.on("message:new", (message) => ...);
//   const ack = await socket.request("message:send", data);
//   socket.connect();
//
// What it does, packet by packet (the server's side is in src/protocol/):
// - Engine.IO: `0{sid,pingInterval,pingTimeout,...}` opens; the server pings (`2`) and we pong
//   (`3`); silence past pingInterval + pingTimeout means the link is dead; `1` closes.
// - Socket.IO, inside Engine.IO `4` packets: `0{auth}` CONNECT, answered `0{sid,pid}` or
//   `4{message}` (refused); `2[name,...args]` events, `2<id>[...]` events that want an ack,
//   `3<id>[...]` acks; `1` DISCONNECT.
// - Connection state recovery: the server appends an offset (a string) to every durable event.
//   After a lost link we reconnect with backoff and send `{...auth, pid, offset}`; when the
//   server answers with the same pid, the session was recovered (its rooms are back and the
//   missed events are replayed), and `connect` says `recovered: true`.

const ENGINE = { OPEN: "0", CLOSE: "1", PING: "2", PONG: "3", MESSAGE: "4" };
const PACKET = { CONNECT: "0", DISCONNECT: "1", EVENT: "2", ACK: "3", CONNECT_ERROR: "4" };

export class Socket {
  /**
   * @param {string} origin where the server is, e.g. `location.origin`
   * @param {object} options
   * @param {object} options.auth the CONNECT payload: `{token, workspaceId}`
   * @param {number} [options.backoffMs=500] first reconnection delay; doubles up to maxBackoffMs
   * @param {number} [options.maxBackoffMs=5000]
   */
  constructor(origin, { auth, backoffMs = 500, maxBackoffMs = 5000 }) {
    const url = new URL("/socket.io/", origin);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.search = "EIO=4&transport=websocket";
    this.url = url.href;
    this.auth = auth;
    this.backoffMs = backoffMs;
    this.maxBackoffMs = maxBackoffMs;
    this.state = "closed";
    this.recovered = false;
    this.pid = null; // connection state recovery: the session's private id ...
    this.offset = null; // ... and the offset of the last durable event received
    this.attempts = 0;
    this.listeners = new Map();
    this.pendingAcks = new Map();
    this.nextAckId = 0;
    this.ws = null;
    this.silenceTimer = null;
    this.retryTimer = null;
    // Back online: try at once instead of waiting out the backoff.
    addEventListener("online", () => {
      if (this.state === "reconnecting") this.retryNow();
    });
  }

  /** Adds a listener for a server event or for `state`, `connect`, `connect_error`, `disconnect`. */
  on(event, fn) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(fn);
    return this;
  }

  emitLocal(event, ...args) {
    for (const fn of this.listeners.get(event) ?? []) fn(...args);
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.emitLocal("state", state);
  }

  get connected() {
    return this.state === "connected";
  }

  /** Opens the link (and reopens it after every loss until `disconnect`). */
  connect() {
    this.stopped = false;
    this.open();
    return this;
  }

  open() {
    clearTimeout(this.retryTimer);
    this.setState(this.attempts === 0 ? "connecting" : "reconnecting");
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onmessage = (e) => {
      if (this.ws === ws && typeof e.data === "string") this.onEnginePacket(e.data);
    };
    // An error is always followed by a close.
    ws.onclose = () => {
      if (this.ws === ws) this.lost("transport close");
    };
  }

  send(text) {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(text);
  }

  onEnginePacket(text) {
    this.expectWithin(this.silenceLimit);
    switch (text[0]) {
      case ENGINE.OPEN: {
        const open = JSON.parse(text.slice(1));
        this.silenceLimit = open.pingInterval + open.pingTimeout;
        this.expectWithin(this.silenceLimit);
        const auth = { ...this.auth };
        if (this.pid) Object.assign(auth, { pid: this.pid, offset: this.offset ?? undefined });
        this.send(ENGINE.MESSAGE + PACKET.CONNECT + JSON.stringify(auth));
        break;
      }
      case ENGINE.PING:
        this.send(ENGINE.PONG);
        break;
      case ENGINE.CLOSE:
        this.drop("server close");
        break;
      case ENGINE.MESSAGE:
        this.onPacket(text.slice(1));
        break;
    }
  }

  /** The link is dead unless a packet arrives within `ms` (the server pings regularly). */
  expectWithin(ms) {
    clearTimeout(this.silenceTimer);
    if (ms) this.silenceTimer = setTimeout(() => this.drop("ping timeout"), ms);
  }

  onPacket(text) {
    const type = text[0];
    let i = 1;
    while (i < text.length && text[i] >= "0" && text[i] <= "9") i++;
    const id = i > 1 ? Number(text.slice(1, i)) : null;
    const data = i < text.length ? JSON.parse(text.slice(i)) : undefined;
    switch (type) {
      case PACKET.CONNECT: {
        this.recovered = Boolean(this.pid) && data.pid === this.pid;
        this.pid = data.pid ?? null;
        this.attempts = 0;
        this.setState("connected");
        this.emitLocal("connect", { recovered: this.recovered });
        break;
      }
      case PACKET.CONNECT_ERROR:
        // A refused token will be refused again: stop and let the page sign in anew.
        this.stopped = true;
        this.setState("refused");
        this.drop("refused");
        this.emitLocal("connect_error", data?.message ?? "refused");
        break;
      case PACKET.EVENT: {
        const [name, ...args] = data;
        const last = args[args.length - 1];
        if (this.pid && args.length > 1 && typeof last === "string") this.offset = last;
        this.emitLocal(name, ...args);
        break;
      }
      case PACKET.ACK: {
        const pending = this.pendingAcks.get(id);
        if (pending) pending.resolve(data[0]);
        break;
      }
      case PACKET.DISCONNECT:
        // The server ended this session on purpose: do not come back on our own.
        this.stopped = true;
        this.drop("server disconnect");
        break;
    }
  }

  /** Sends an event without waiting for an answer; false when not connected. */
  emit(event, data) {
    if (!this.connected) return false;
    const args = data === undefined ? [event] : [event, data];
    this.send(ENGINE.MESSAGE + PACKET.EVENT + JSON.stringify(args));
    return true;
  }

  /**
   * Sends an event and resolves with the server's ack; rejects when not connected, when the
   * link drops first, or after `timeoutMs`.
   */
  request(event, data, timeoutMs = 10000) {
    return new Promise((resolve, reject) => {
      if (!this.connected) return reject(new Error("not connected"));
      const id = this.nextAckId++;
      const timer = setTimeout(() => settle(reject, new Error(`no answer to ${event}`)), timeoutMs);
      const settle = (fn, value) => {
        clearTimeout(timer);
        this.pendingAcks.delete(id);
        fn(value);
      };
      this.pendingAcks.set(id, {
        resolve: (value) => settle(resolve, value),
        reject: (error) => settle(reject, error),
      });
      this.send(ENGINE.MESSAGE + PACKET.EVENT + id + JSON.stringify([event, data]));
    });
  }

  /** Closes the link on our side and handles the loss. */
  drop(reason) {
    const ws = this.ws;
    this.ws = null;
    ws?.close();
    this.lost(reason);
  }

  lost(reason) {
    this.ws = null;
    clearTimeout(this.silenceTimer);
    for (const pending of this.pendingAcks.values()) pending.reject(new Error(`link lost: ${reason}`));
    const wasConnected = this.state === "connected";
    if (this.stopped) {
      if (this.state !== "refused") this.setState("closed");
    } else {
      // Exponential backoff with jitter, so a restarted server is not hit by everyone at once.
      const delay = Math.min(this.maxBackoffMs, this.backoffMs * 2 ** this.attempts) * (0.5 + Math.random() / 2);
      this.attempts++;
      this.setState("reconnecting");
      this.retryTimer = setTimeout(() => this.open(), delay);
    }
    if (wasConnected) this.emitLocal("disconnect", reason);
  }

  retryNow() {
    clearTimeout(this.retryTimer);
    this.open();
  }

  /** Says goodbye (no recovery wanted) and stops reconnecting. */
  disconnect() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.send(ENGINE.MESSAGE + PACKET.DISCONNECT);
    this.drop("client disconnect");
  }
}

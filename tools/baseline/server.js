// The seed's realtime stack, as seed-research.md sketches it, for benchmarking ocomms-rt
// against: Node + socket.io 4.8 with @socket.io/redis-adapter (ioredis pub/sub), PostgreSQL
// through `pg`, one INSERT per message, presence keys with a TTL in Redis, typing broadcast
// to the room without storage. Same env vars as ocomms-rt (contract §8); logs `listen=HOST:PORT`
// when ready so tools can find the port.
"use strict";

const http = require("http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { Redis } = require("ioredis");
const jwt = require("jsonwebtoken");

const db = require("./db");
const admin = require("./admin");

const PRESENCE_TTL = 60; // seconds, refreshed every 30 s (seed: heartbeat-based presence)
const HEARTBEAT_MS = 30_000;
const MAX_CONTENT = 4000;

function env(name, fallback) {
  const v = process.env[name] ?? fallback;
  if (v === undefined || v === "") {
    console.error(`baseline: ${name} is required (see contract §8)`);
    process.exit(2);
  }
  return v;
}

const room = {
  channel: (id) => `channel:${id}`,
  dm: (id) => `dm:${id}`,
  workspace: (id) => `workspace:${id}`,
  user: (id) => `user:${id}`,
};
const targetRoom = (t) => (t.targetType === "dm" ? room.dm(t.targetId) : room.channel(t.targetId));

// Token from the CONNECT auth, else the upgrade's Authorization header or better-auth cookie.
function tokenOf(socket) {
  const a = socket.handshake.auth || {};
  if (typeof a.token === "string" && a.token) return a.token;
  const h = socket.handshake.headers.authorization;
  if (h && h.startsWith("Bearer ")) return h.slice(7);
  const m = /(?:^|;\s*)better-auth\.session_token=([^;]+)/.exec(socket.handshake.headers.cookie || "");
  return m ? decodeURIComponent(m[1]).split(".")[0] : null;
}

function authMiddleware(pool, secret) {
  return async (socket, next) => {
    try {
      const token = tokenOf(socket);
      const workspaceId = (socket.handshake.auth || {}).workspaceId;
      if (!token) return next(new Error("no token: pass auth.token or a session cookie"));
      if (typeof workspaceId !== "string") return next(new Error("auth.workspaceId is required"));
      let userId;
      if (token.split(".").length === 3) {
        let claims;
        try {
          claims = jwt.verify(token, secret, { algorithms: ["HS256"] });
        } catch (e) {
          return next(new Error(`invalid token: ${e.message}`));
        }
        if (typeof claims.exp !== "number") return next(new Error("token has no exp"));
        userId = claims.sub;
      } else {
        const r = await pool.query(
          "SELECT user_id FROM sessions WHERE token = $1 AND expires_at > now()",
          [token],
        );
        if (r.rowCount === 0) return next(new Error("session expired or unknown"));
        userId = r.rows[0].user_id;
      }
      const user = await db.findUser(pool, userId);
      if (!user) return next(new Error("token's user does not exist"));
      if (!(await db.isWorkspaceMember(pool, workspaceId, userId))) {
        return next(new Error("not a member of this workspace"));
      }
      socket.data.userId = user.id;
      socket.data.user = { id: user.id, name: user.name };
      socket.data.workspaceId = workspaceId;
      next();
    } catch (e) {
      next(new Error("authentication failed"));
    }
  };
}

// Presence per (workspace, user) across connections: a connection counter and a status key
// with a TTL in Redis; `presence:update` goes to the workspace room only on a change.
function presence(io, redis) {
  const key = (ws, u) => `presence:${ws}:${u}`;
  const conns = (ws, u) => `presence:conns:${ws}:${u}`;
  const announce = (ws, userId, status) =>
    io.to(room.workspace(ws)).emit("presence:update", { userId, status });
  return {
    async online(ws, u) {
      const n = await redis.incr(conns(ws, u));
      await redis.expire(conns(ws, u), PRESENCE_TTL);
      const prev = await redis.get(key(ws, u));
      await redis.setex(key(ws, u), PRESENCE_TTL, "active");
      if (n === 1 || prev !== "active") announce(ws, u, "active");
    },
    async set(ws, u, status) {
      const prev = await redis.get(key(ws, u));
      await redis.setex(key(ws, u), PRESENCE_TTL, status);
      if (prev !== status) announce(ws, u, status);
    },
    async heartbeat(ws, u) {
      await redis.expire(key(ws, u), PRESENCE_TTL);
      await redis.expire(conns(ws, u), PRESENCE_TTL);
    },
    async offline(ws, u) {
      const n = await redis.decr(conns(ws, u));
      if (n <= 0) {
        await redis.del(key(ws, u), conns(ws, u));
        announce(ws, u, "offline");
      }
    },
    async query(ws, ids) {
      const p = redis.pipeline();
      for (const id of ids) p.get(key(ws, id));
      const r = await p.exec();
      return Object.fromEntries(ids.map((id, i) => [id, (r[i] && r[i][1]) || "offline"]));
    },
  };
}

function validTarget(d) {
  return (
    d &&
    typeof d.targetId === "string" &&
    (d.targetType === "channel" || d.targetType === "dm")
  );
}

function onConnection(io, pool, pres) {
  return async (socket) => {
    const { userId, workspaceId, user } = socket.data;
    const ack = (cb, v) => typeof cb === "function" && cb(v);

    // Handlers are registered first so nothing sent right after CONNECT is lost.
    socket.on("message:send", async (d, cb) => {
      try {
        if (!validTarget(d) || typeof d.content !== "string") {
          return ack(cb, { success: false, error: "expected {targetId, targetType, content}" });
        }
        if (!d.content.trim()) return ack(cb, { success: false, error: "content is empty" });
        if ([...d.content].length > MAX_CONTENT) {
          return ack(cb, { success: false, error: `content over ${MAX_CONTENT} characters` });
        }
        if (!(await db.canAccess(pool, workspaceId, userId, d.targetType, d.targetId))) {
          return ack(cb, { success: false, error: "not a member of this target" });
        }
        const { row, duplicate } = await db.insertMessage(pool, {
          authorId: userId,
          targetType: d.targetType,
          targetId: d.targetId,
          content: d.content,
          clientMsgId: typeof d.clientMsgId === "string" ? d.clientMsgId : null,
        });
        const msg = db.toMessage(row, user);
        ack(cb, { success: true, messageId: msg.id, sequence: msg.sequence, createdAt: msg.createdAt });
        if (!duplicate) io.to(targetRoom(d)).emit("message:new", msg);
      } catch (e) {
        ack(cb, { success: false, error: `could not store the message: ${e.message}` });
      }
    });

    socket.on("message:history", async (d, cb) => {
      try {
        if (!validTarget(d)) return ack(cb, { success: false, error: "expected {targetId, targetType}" });
        if (!(await db.canAccess(pool, workspaceId, userId, d.targetType, d.targetId))) {
          return ack(cb, { success: false, error: "not a member of this target" });
        }
        const rows = await db.history(pool, d);
        const messages = rows.map((r) => db.toMessage(r, { id: r.author_id, name: r.author_name }));
        ack(cb, { success: true, messages });
      } catch (e) {
        ack(cb, { success: false, error: e.message });
      }
    });

    const typing = (isTyping) => (d) => {
      if (!validTarget(d) || !socket.rooms.has(targetRoom(d))) return;
      socket.to(targetRoom(d)).emit("typing:update", {
        userId,
        userName: user.name,
        targetId: d.targetId,
        isTyping,
      });
    };
    socket.on("typing:start", typing(true));
    socket.on("typing:stop", typing(false));

    socket.on("presence:setAway", () => pres.set(workspaceId, userId, "away").catch(() => {}));
    socket.on("presence:setActive", () => pres.set(workspaceId, userId, "active").catch(() => {}));
    socket.on("presence:query", async (d, cb) => {
      const ids = d && Array.isArray(d.userIds) ? d.userIds.filter((x) => typeof x === "string") : null;
      if (!ids) return ack(cb, { success: false, error: "expected {userIds: [uuid]}" });
      ack(cb, { success: true, presence: await pres.query(workspaceId, ids) });
    });

    const beat = setInterval(() => pres.heartbeat(workspaceId, userId).catch(() => {}), HEARTBEAT_MS);
    socket.on("disconnect", () => {
      clearInterval(beat);
      pres.offline(workspaceId, userId).catch(() => {});
    });

    socket.join([room.user(userId), room.workspace(workspaceId)]);
    try {
      const r = await db.userRooms(pool, workspaceId, userId);
      socket.join([...r.channels.map(room.channel), ...r.dms.map(room.dm)]);
      await pres.online(workspaceId, userId);
    } catch (e) {
      socket.emit("error", { message: `could not join rooms: ${e.message}` });
    }
  };
}

async function main() {
  const listen = env("CHAT_LISTEN", "0.0.0.0:3000");
  const secret = env("CHAT_JWT_SECRET");
  const adminToken = env("CHAT_ADMIN_TOKEN");
  const pool = db.connect(env("DATABASE_URL"));
  const redisUrl = env("REDIS_URL", "redis://127.0.0.1:6379");
  await db.migrate(pool);

  const pubClient = new Redis(redisUrl);
  const subClient = pubClient.duplicate();
  const redis = pubClient.duplicate();
  await Promise.all(
    [pubClient, subClient, redis].map((c) => new Promise((ok) => c.once("ready", ok))),
  );

  const ctx = { pool, adminToken, io: null };
  const httpServer = http.createServer(admin.handler(ctx));
  const io = new Server(httpServer, { cors: { origin: true, credentials: true } });
  ctx.io = io;
  io.adapter(createAdapter(pubClient, subClient));
  io.use(authMiddleware(pool, secret));
  io.on("connection", onConnection(io, pool, presence(io, redis)));

  const i = listen.lastIndexOf(":");
  const host = listen.slice(0, i);
  const port = Number(listen.slice(i + 1));
  if (!Number.isInteger(port)) {
    console.error(`baseline: CHAT_LISTEN=${listen} is not HOST:PORT`);
    process.exit(2);
  }
  httpServer.listen(port, host, () => {
    const a = httpServer.address();
    console.log(`baseline ready listen=${a.address}:${a.port} pid=${process.pid}`);
  });
  const stop = () => {
    io.close();
    pool.end().finally(() => process.exit(0));
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((e) => {
  console.error(`baseline: failed to start: ${e.message}`);
  process.exit(1);
});

// The admin API subset of contract §6 that the load generator uses: users, workspaces and
// their members, channels and their members, plus /healthz. JSON in and out, Bearer token.
"use strict";

const db = require("./db");

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "Content-Type": "application/json",
    "Content-Length": Buffer.byteLength(text),
  });
  res.end(text);
}

function readJson(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on("data", (c) => {
      size += c.length;
      if (size > 1 << 20) {
        reject(Object.assign(new Error("body over 1 MiB"), { status: 413 }));
        req.destroy();
      } else chunks.push(c);
    });
    req.on("end", () => {
      try {
        resolve(chunks.length ? JSON.parse(Buffer.concat(chunks).toString("utf8")) : {});
      } catch {
        reject(Object.assign(new Error("body is not JSON"), { status: 400 }));
      }
    });
    req.on("error", reject);
  });
}

const UUID = "([0-9a-fA-F-]{36})";
const routes = [
  [
    new RegExp(`^/api/v1/users$`),
    async (ctx, _m, b) => {
      if (typeof b.name !== "string" || !b.name) throw bad("name is required");
      const id = db.randomUUID();
      await ctx.pool.query("INSERT INTO users (id, name, email) VALUES ($1, $2, $3)", [
        id,
        b.name,
        b.email ?? null,
      ]);
      return { id };
    },
  ],
  [
    new RegExp(`^/api/v1/workspaces$`),
    async (ctx, _m, b) => {
      if (!b.slug || !b.name) throw bad("slug and name are required");
      const id = db.randomUUID();
      await ctx.pool.query("INSERT INTO workspaces (id, slug, name) VALUES ($1, $2, $3)", [
        id,
        b.slug,
        b.name,
      ]);
      return { id };
    },
  ],
  [
    new RegExp(`^/api/v1/workspaces/${UUID}/members$`),
    async (ctx, m, b) => {
      if (!b.userId) throw bad("userId is required");
      await ctx.pool.query(
        `INSERT INTO workspace_members (workspace_id, user_id, role) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING`,
        [m[1], b.userId, b.role ?? "member"],
      );
      return { success: true };
    },
  ],
  [
    new RegExp(`^/api/v1/channels$`),
    async (ctx, _m, b) => {
      if (!b.workspaceId || !b.slug || !b.name) throw bad("workspaceId, slug and name are required");
      const id = db.randomUUID();
      await ctx.pool.query(
        "INSERT INTO channels (id, workspace_id, slug, name, is_private) VALUES ($1, $2, $3, $4, $5)",
        [id, b.workspaceId, b.slug, b.name, !!b.isPrivate],
      );
      return { id };
    },
  ],
  [
    new RegExp(`^/api/v1/channels/${UUID}/members$`),
    async (ctx, m, b) => {
      if (!b.userId) throw bad("userId is required");
      await ctx.pool.query(
        "INSERT INTO channel_members (channel_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        [m[1], b.userId],
      );
      // Live sockets of the user join the room without reconnecting (contract §5).
      ctx.io.in(`user:${b.userId}`).socketsJoin(`channel:${m[1]}`);
      return { success: true };
    },
  ],
];

function bad(message) {
  return Object.assign(new Error(message), { status: 400 });
}

function handler(ctx) {
  return async (req, res) => {
    const url = req.url.split("?")[0];
    if (req.method === "GET" && url === "/healthz") return send(res, 200, { status: "ok" });
    if (!url.startsWith("/api/")) return send(res, 404, { error: `no route ${url}` });
    if (req.headers.authorization !== `Bearer ${ctx.adminToken}`) {
      return send(res, 401, { error: "missing or wrong admin bearer token" });
    }
    const route = req.method === "POST" && routes.find(([re]) => re.test(url));
    if (!route) return send(res, 404, { error: `no route ${req.method} ${url}` });
    try {
      const body = await readJson(req);
      send(res, 200, await route[1](ctx, url.match(route[0]), body));
    } catch (e) {
      const status = e.status || (e.code === "23505" ? 409 : e.code === "23503" ? 404 : 500);
      send(res, status, { error: e.message });
    }
  };
}

module.exports = { handler };

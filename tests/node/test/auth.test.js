// Contract §2: every way a token may arrive, and every refusal as a connect_error that says
// what is wrong.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { EioClient, RawWebSocket } from "../lib/raw.js";
import { emitWithAck, once, startServer } from "../lib/server.js";

describe("authentication on CONNECT", () => {
  let server;
  let ws; // provisioned workspace
  let alice;
  let outsider; // a user who is not a member of ws

  before(async () => {
    server = await startServer();
    ws = await server.provision({ users: 2, channels: [{ members: "all" }] });
    alice = ws.users[0];
    outsider = await server.createUser("outsider");
  });

  after(async () => {
    await server?.stop();
  });

  /** Proves a connected socket really is authenticated as `user`: a send is acked. */
  async function assertCanSend(socket) {
    const ack = await emitWithAck(socket, "message:send", {
      targetId: ws.channels[0].id,
      targetType: "channel",
      content: "hello",
      clientMsgId: randomUUID(),
    });
    assert.equal(ack.success, true, `send ack: ${JSON.stringify(ack)}`);
  }

  test("JWT in the auth payload", async () => {
    const socket = await server.connect({ token: server.jwt(alice.id, { name: alice.name }), workspaceId: ws.workspaceId });
    assert.equal(socket.connected, true);
    assert.equal(typeof socket.id, "string");
    await assertCanSend(socket);
    socket.disconnect();
  });

  test("session token in the auth payload", async () => {
    const session = await server.session(alice.id);
    assert.equal(typeof session.token, "string");
    assert.ok(!Number.isNaN(Date.parse(session.expiresAt)), `expiresAt ${session.expiresAt}`);
    const socket = await server.connect({ token: session.token, workspaceId: ws.workspaceId });
    await assertCanSend(socket);
    socket.disconnect();
  });

  test("Authorization: Bearer header on the upgrade request", async () => {
    const socket = await server.connect({
      workspaceId: ws.workspaceId,
      extraHeaders: { authorization: `Bearer ${server.jwt(alice.id)}` },
    });
    await assertCanSend(socket);
    socket.disconnect();
  });

  test("better-auth.session_token cookie, signed form TOKEN.SIG", async () => {
    const { token } = await server.session(alice.id);
    const socket = await server.connect({
      workspaceId: ws.workspaceId,
      extraHeaders: { cookie: `theme=dark; better-auth.session_token=${token}.c2lnbmF0dXJl; other=1` },
    });
    await assertCanSend(socket);
    socket.disconnect();
  });

  test("better-auth.session_token cookie, bare TOKEN", async () => {
    const { token } = await server.session(alice.id);
    const socket = await server.connect({
      workspaceId: ws.workspaceId,
      extraHeaders: { cookie: `better-auth.session_token=${token}` },
    });
    await assertCanSend(socket);
    socket.disconnect();
  });

  // Each case: what the client sends, and a loose pattern the reason must match.
  const refusals = [
    { name: "no token at all", auth: () => ({ workspaceId: ws.workspaceId }), reason: /token|auth/i },
    {
      name: "JWT signed with another secret",
      auth: () => ({ token: server.jwt(alice.id, { secret: "another-secret-another-secret-00" }), workspaceId: ws.workspaceId }),
      reason: /signature|invalid/i,
    },
    {
      name: "expired JWT",
      auth: () => ({ token: server.jwt(alice.id, { expSeconds: -60 }), workspaceId: ws.workspaceId }),
      reason: /expired/i,
    },
    {
      name: "JWT without exp",
      auth: () => ({ token: server.jwt(alice.id, { expSeconds: null }), workspaceId: ws.workspaceId }),
      reason: /exp/i,
    },
    {
      name: "JWT with alg none",
      auth: () => ({ token: server.jwt(alice.id, { alg: "none" }), workspaceId: ws.workspaceId }),
      reason: /alg|none|HS256|invalid/i,
    },
    {
      name: "JWT signed HS512 with the right secret",
      auth: () => ({ token: server.jwt(alice.id, { alg: "HS512" }), workspaceId: ws.workspaceId }),
      reason: /alg|HS512|HS256|invalid/i,
    },
    {
      name: "unknown session token",
      auth: () => ({ token: `no-such-session-${randomUUID()}`, workspaceId: ws.workspaceId }),
      reason: /session|token|invalid|unknown/i,
    },
    {
      name: "JWT whose sub is not a user",
      auth: () => ({ token: server.jwt(randomUUID()), workspaceId: ws.workspaceId }),
      reason: /user/i,
    },
    {
      name: "missing workspaceId",
      auth: () => ({ token: server.jwt(alice.id) }),
      reason: /workspace/i,
    },
    {
      name: "workspaceId that is not a uuid",
      auth: () => ({ token: server.jwt(alice.id), workspaceId: "not-a-uuid" }),
      reason: /workspace|uuid/i,
    },
    {
      name: "user not a member of the workspace",
      auth: () => ({ token: server.jwt(outsider.id), workspaceId: ws.workspaceId }),
      reason: /member/i,
    },
  ];

  for (const c of refusals) {
    test(`refused: ${c.name}`, async () => {
      const { socket, error } = await server.tryConnect({ auth: c.auth() });
      try {
        assert.ok(error, "connect_error expected, but the socket connected");
        assert.equal(socket.connected, false);
        assert.match(error.message, c.reason, `reason "${error.message}" should match ${c.reason}`);
      } finally {
        socket.disconnect();
      }
    });
  }

  test("refused: expired session token", async () => {
    const { token, expiresAt } = await server.session(alice.id, 1);
    // Expiry is a matter of time: wait until the server's own expiresAt has passed.
    const wait = Date.parse(expiresAt) - Date.now() + 150;
    if (wait > 0) await new Promise((r) => setTimeout(r, Math.min(wait, 3000)));
    const { socket, error } = await server.tryConnect({ token, workspaceId: ws.workspaceId });
    try {
      assert.ok(error, "connect_error expected for an expired session");
      assert.match(error.message, /expired|session|invalid/i);
    } finally {
      socket.disconnect();
    }
  });

  test("a refused client connects once it sends a good token; the server stays up", async () => {
    const { socket, error } = await server.tryConnect({ token: server.jwt(alice.id, { expSeconds: -5 }), workspaceId: ws.workspaceId });
    assert.ok(error, "first attempt must be refused");
    try {
      socket.auth = { token: server.jwt(alice.id), workspaceId: ws.workspaceId };
      const connected = once(socket, "connect", 5000);
      socket.connect();
      await connected;
      assert.equal(socket.connected, true);
      await assertCanSend(socket);
    } finally {
      socket.disconnect();
    }
    const health = await server.request("GET", "/healthz");
    assert.equal(health.status, 200);
  });

  test("refusal joins no room: a refused raw socket receives nothing", async () => {
    // bob is a member of the channel but presents an expired token. socket.io-client would
    // hide events on a socket that is not connected, so this uses a raw Engine.IO client.
    const bob = ws.users[1];
    const raw = new EioClient(await RawWebSocket.connect(server.port, { host: server.host }));
    try {
      await assert.rejects(
        raw.handshake({ token: server.jwt(bob.id, { expSeconds: -5 }), workspaceId: ws.workspaceId }),
        /CONNECT refused: 44/,
      );
      const bobOk = await server.connectUser(bob, ws.workspaceId);
      const aliceSocket = await server.connectUser(alice, ws.workspaceId);
      const delivered = once(bobOk, "message:new", 5000);
      await assertCanSend(aliceSocket);
      await delivered;
      assert.deepEqual(raw.events, [], "the refused socket got no event");
      bobOk.disconnect();
      aliceSocket.disconnect();
    } finally {
      raw.t.destroy();
    }
  });
});

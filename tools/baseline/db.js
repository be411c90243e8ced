// PostgreSQL access for the baseline, as the seed sketches it: a `pg` Pool with its default
// size, the contract §7 schema created at start when missing, and one transaction with one
// INSERT per message. The sequence comes from a per-target counter row, locked by the UPDATE
// until COMMIT, which is the seed's "get next sequence number atomically" without a trigger.
"use strict";

const { Pool } = require("pg");
const { randomUUID } = require("crypto");

const SCHEMA = `
CREATE TABLE IF NOT EXISTS users (
  id uuid PRIMARY KEY, name text NOT NULL, email text UNIQUE, created_at timestamptz DEFAULT now());
CREATE TABLE IF NOT EXISTS sessions (
  id uuid PRIMARY KEY, user_id uuid NOT NULL REFERENCES users ON DELETE CASCADE,
  token text UNIQUE NOT NULL, expires_at timestamptz NOT NULL, created_at timestamptz DEFAULT now());
CREATE TABLE IF NOT EXISTS workspaces (
  id uuid PRIMARY KEY, slug text UNIQUE NOT NULL, name text NOT NULL, created_at timestamptz DEFAULT now());
CREATE TABLE IF NOT EXISTS workspace_members (
  workspace_id uuid NOT NULL REFERENCES workspaces ON DELETE CASCADE,
  user_id uuid NOT NULL REFERENCES users ON DELETE CASCADE, role text,
  PRIMARY KEY (workspace_id, user_id));
CREATE TABLE IF NOT EXISTS channels (
  id uuid PRIMARY KEY, workspace_id uuid NOT NULL REFERENCES workspaces ON DELETE CASCADE,
  slug text, name text, is_private boolean DEFAULT false, created_at timestamptz DEFAULT now(),
  UNIQUE (workspace_id, slug));
CREATE TABLE IF NOT EXISTS channel_members (
  channel_id uuid NOT NULL REFERENCES channels ON DELETE CASCADE,
  user_id uuid NOT NULL REFERENCES users ON DELETE CASCADE, PRIMARY KEY (channel_id, user_id));
CREATE TABLE IF NOT EXISTS conversations (
  id uuid PRIMARY KEY, workspace_id uuid NOT NULL REFERENCES workspaces ON DELETE CASCADE,
  created_at timestamptz DEFAULT now());
CREATE TABLE IF NOT EXISTS conversation_participants (
  conversation_id uuid NOT NULL REFERENCES conversations ON DELETE CASCADE,
  user_id uuid NOT NULL REFERENCES users ON DELETE CASCADE, PRIMARY KEY (conversation_id, user_id));
CREATE TABLE IF NOT EXISTS messages (
  id uuid PRIMARY KEY, content text NOT NULL,
  author_id uuid NOT NULL REFERENCES users ON DELETE CASCADE,
  channel_id uuid REFERENCES channels ON DELETE CASCADE,
  conversation_id uuid REFERENCES conversations ON DELETE CASCADE,
  sequence bigint NOT NULL, client_msg_id text, deleted_at timestamptz,
  created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL,
  CHECK ((channel_id IS NULL) <> (conversation_id IS NULL)),
  UNIQUE (channel_id, sequence), UNIQUE (conversation_id, sequence),
  UNIQUE (author_id, client_msg_id));
CREATE INDEX IF NOT EXISTS messages_author_idx ON messages (author_id);
CREATE TABLE IF NOT EXISTS target_sequences (
  target_id uuid PRIMARY KEY, last_sequence bigint NOT NULL);
`;

function connect(url) {
  const pool = new Pool({ connectionString: url });
  // An idle client whose backend goes away emits 'error' on the pool; pg's docs ask for a
  // handler so that this does not crash the process (the pool replaces the client).
  pool.on("error", (e) => console.error(`baseline: idle PostgreSQL client lost: ${e.message}`));
  return pool;
}

async function migrate(pool) {
  await pool.query(SCHEMA);
}

// The wire shape of a message row (contract §4).
function toMessage(row, author) {
  return {
    id: row.id,
    content: row.deleted_at ? "" : row.content,
    authorId: row.author_id,
    channelId: row.channel_id,
    conversationId: row.conversation_id,
    sequence: Number(row.sequence),
    createdAt: new Date(row.created_at).toISOString(),
    deletedAt: row.deleted_at ? new Date(row.deleted_at).toISOString() : null,
    author,
  };
}

async function findUser(pool, id) {
  const r = await pool.query("SELECT id, name FROM users WHERE id = $1", [id]);
  return r.rows[0] || null;
}

async function isWorkspaceMember(pool, workspaceId, userId) {
  const r = await pool.query(
    "SELECT 1 FROM workspace_members WHERE workspace_id = $1 AND user_id = $2",
    [workspaceId, userId],
  );
  return r.rowCount > 0;
}

async function userRooms(pool, workspaceId, userId) {
  const ch = await pool.query(
    `SELECT cm.channel_id AS id FROM channel_members cm JOIN channels c ON c.id = cm.channel_id
      WHERE cm.user_id = $1 AND c.workspace_id = $2`,
    [userId, workspaceId],
  );
  const dm = await pool.query(
    `SELECT cp.conversation_id AS id FROM conversation_participants cp
       JOIN conversations c ON c.id = cp.conversation_id
      WHERE cp.user_id = $1 AND c.workspace_id = $2`,
    [userId, workspaceId],
  );
  return { channels: ch.rows.map((r) => r.id), dms: dm.rows.map((r) => r.id) };
}

// Whether the user may post to / read the target, within the socket's workspace.
async function canAccess(pool, workspaceId, userId, targetType, targetId) {
  const sql =
    targetType === "channel"
      ? `SELECT 1 FROM channel_members m JOIN channels c ON c.id = m.channel_id
          WHERE m.channel_id = $1 AND m.user_id = $2 AND c.workspace_id = $3`
      : `SELECT 1 FROM conversation_participants p JOIN conversations c ON c.id = p.conversation_id
          WHERE p.conversation_id = $1 AND p.user_id = $2 AND c.workspace_id = $3`;
  const r = await pool.query(sql, [targetId, userId, workspaceId]);
  return r.rowCount > 0;
}

// One transaction per message: next sequence from the counter row, then the INSERT. A retried
// (author, clientMsgId) returns the stored row instead of a second message.
async function insertMessage(pool, { authorId, targetType, targetId, content, clientMsgId }) {
  const client = await pool.connect();
  try {
    await client.query("BEGIN");
    if (clientMsgId) {
      const dup = await client.query(
        "SELECT * FROM messages WHERE author_id = $1 AND client_msg_id = $2",
        [authorId, clientMsgId],
      );
      if (dup.rowCount > 0) {
        await client.query("COMMIT");
        return { row: dup.rows[0], duplicate: true };
      }
    }
    const seq = await client.query(
      `INSERT INTO target_sequences (target_id, last_sequence) VALUES ($1, 1)
       ON CONFLICT (target_id) DO UPDATE SET last_sequence = target_sequences.last_sequence + 1
       RETURNING last_sequence`,
      [targetId],
    );
    const now = new Date();
    const ins = await client.query(
      `INSERT INTO messages (id, content, author_id, channel_id, conversation_id, sequence,
                             client_msg_id, created_at, updated_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING *`,
      [
        randomUUID(),
        content,
        authorId,
        targetType === "channel" ? targetId : null,
        targetType === "dm" ? targetId : null,
        seq.rows[0].last_sequence,
        clientMsgId || null,
        now,
      ],
    );
    await client.query("COMMIT");
    return { row: ins.rows[0], duplicate: false };
  } catch (e) {
    await client.query("ROLLBACK").catch(() => {});
    throw e;
  } finally {
    client.release();
  }
}

async function history(pool, { targetType, targetId, beforeSequence, afterSequence, limit }) {
  const col = targetType === "channel" ? "channel_id" : "conversation_id";
  const n = Math.min(Math.max(Number(limit) || 50, 1), 100);
  let r;
  if (afterSequence != null) {
    r = await pool.query(
      `SELECT m.*, u.name AS author_name FROM messages m JOIN users u ON u.id = m.author_id
        WHERE m.${col} = $1 AND m.sequence > $2 ORDER BY m.sequence ASC LIMIT $3`,
      [targetId, afterSequence, n],
    );
    return r.rows;
  }
  r = await pool.query(
    `SELECT m.*, u.name AS author_name FROM messages m JOIN users u ON u.id = m.author_id
      WHERE m.${col} = $1 AND ($2::bigint IS NULL OR m.sequence < $2)
      ORDER BY m.sequence DESC LIMIT $3`,
    [targetId, beforeSequence ?? null, n],
  );
  return r.rows.reverse();
}

module.exports = {
  connect,
  migrate,
  toMessage,
  findUser,
  isWorkspaceMember,
  userRooms,
  canAccess,
  insertMessage,
  history,
  randomUUID,
};

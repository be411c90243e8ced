-- The tables of contract §7, shared with the web app: names and columns are fixed.
-- Every foreign key cascades on delete.

CREATE TABLE IF NOT EXISTS users (
    id         uuid PRIMARY KEY,
    name       text NOT NULL,
    email      text UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS sessions (
    id         uuid PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token      text UNIQUE NOT NULL,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS sessions_user_id_idx ON sessions (user_id);

CREATE TABLE IF NOT EXISTS workspaces (
    id         uuid PRIMARY KEY,
    slug       text UNIQUE NOT NULL,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS workspace_members (
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role         text,
    PRIMARY KEY (workspace_id, user_id)
);
CREATE INDEX IF NOT EXISTS workspace_members_user_id_idx ON workspace_members (user_id);

CREATE TABLE IF NOT EXISTS channels (
    id           uuid PRIMARY KEY,
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    slug         text NOT NULL,
    name         text NOT NULL,
    is_private   boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, slug)
);

-- `joined_at` is ours (more columns are allowed): CONNECT lists rooms in the order joined.
CREATE TABLE IF NOT EXISTS channel_members (
    channel_id uuid NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    joined_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (channel_id, user_id)
);
-- CONNECT looks memberships up by user.
CREATE INDEX IF NOT EXISTS channel_members_user_id_idx ON channel_members (user_id);

CREATE TABLE IF NOT EXISTS conversations (
    id           uuid PRIMARY KEY,
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS conversation_participants (
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    joined_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX IF NOT EXISTS conversation_participants_user_id_idx
    ON conversation_participants (user_id);

CREATE TABLE IF NOT EXISTS messages (
    id              uuid PRIMARY KEY,
    content         text NOT NULL,
    author_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    channel_id      uuid REFERENCES channels (id) ON DELETE CASCADE,
    conversation_id uuid REFERENCES conversations (id) ON DELETE CASCADE,
    sequence        bigint NOT NULL,
    client_msg_id   text,
    deleted_at      timestamptz,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    CONSTRAINT messages_one_target CHECK ((channel_id IS NULL) <> (conversation_id IS NULL)),
    CONSTRAINT messages_channel_sequence UNIQUE (channel_id, sequence),
    CONSTRAINT messages_conversation_sequence UNIQUE (conversation_id, sequence),
    CONSTRAINT messages_author_client_msg_id UNIQUE (author_id, client_msg_id)
);
CREATE INDEX IF NOT EXISTS messages_author_id_idx ON messages (author_id);

-- Ours: the last sequence handed out per channel or conversation. The row lock taken by
-- `INSERT … ON CONFLICT DO UPDATE` serialises every writer (and every node) of one target,
-- so sequences stay unique and increasing without scanning `messages`. `step` is the size
-- of the last allocation, kept so the upsert can add it on conflict.
CREATE TABLE IF NOT EXISTS message_sequences (
    target_id uuid PRIMARY KEY,
    last      bigint NOT NULL,
    step      bigint NOT NULL DEFAULT 0
);
INSERT INTO message_sequences (target_id, last)
SELECT COALESCE(channel_id, conversation_id), max(sequence)
FROM messages
GROUP BY COALESCE(channel_id, conversation_id)
ON CONFLICT (target_id) DO UPDATE SET last = GREATEST(message_sequences.last, EXCLUDED.last);

-- Membership changes, whoever writes them (the web app writes these tables directly), are
-- announced on channel `ocomms_membership` as JSON
-- {"user","workspace","kind":"channel"|"dm","room","joined","origin"}; `origin` is the
-- writer's application_name, so a node can skip the changes it announced itself.
CREATE OR REPLACE FUNCTION ocomms_notify_channel_member() RETURNS trigger AS $$
DECLARE
    row_ channel_members;
    ws uuid;
BEGIN
    IF TG_OP = 'DELETE' THEN row_ := OLD; ELSE row_ := NEW; END IF;
    SELECT workspace_id INTO ws FROM channels WHERE id = row_.channel_id;
    -- A channel deleted with its members (cascade) has no workspace left to scope to.
    IF ws IS NOT NULL THEN
        PERFORM pg_notify('ocomms_membership', json_build_object(
            'user', row_.user_id, 'workspace', ws, 'kind', 'channel',
            'room', row_.channel_id, 'joined', TG_OP = 'INSERT',
            'origin', current_setting('application_name'))::text);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION ocomms_notify_conversation_participant() RETURNS trigger AS $$
DECLARE
    row_ conversation_participants;
    ws uuid;
BEGIN
    IF TG_OP = 'DELETE' THEN row_ := OLD; ELSE row_ := NEW; END IF;
    SELECT workspace_id INTO ws FROM conversations WHERE id = row_.conversation_id;
    IF ws IS NOT NULL THEN
        PERFORM pg_notify('ocomms_membership', json_build_object(
            'user', row_.user_id, 'workspace', ws, 'kind', 'dm',
            'room', row_.conversation_id, 'joined', TG_OP = 'INSERT',
            'origin', current_setting('application_name'))::text);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS channel_members_notify ON channel_members;
CREATE TRIGGER channel_members_notify
    AFTER INSERT OR DELETE ON channel_members
    FOR EACH ROW EXECUTE FUNCTION ocomms_notify_channel_member();

DROP TRIGGER IF EXISTS conversation_participants_notify ON conversation_participants;
CREATE TRIGGER conversation_participants_notify
    AFTER INSERT OR DELETE ON conversation_participants
    FOR EACH ROW EXECUTE FUNCTION ocomms_notify_conversation_participant();

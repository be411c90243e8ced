-- Cluster (docs/cluster.md, "Starting a room mid-stream"): a membership NOTIFY also carries
-- the room's top sequence when the change was written (`floor`, 0 before its first message),
-- so a node whose first member of the room arrives through it starts the room's stream there:
-- every message committed after the change reaches the new member, on every node.
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
            'origin', current_setting('application_name'),
            'floor', COALESCE((SELECT last FROM message_sequences
                               WHERE target_id = row_.channel_id), 0))::text);
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
            'origin', current_setting('application_name'),
            'floor', COALESCE((SELECT last FROM message_sequences
                               WHERE target_id = row_.conversation_id), 0))::text);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

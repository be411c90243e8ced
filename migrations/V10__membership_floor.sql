-- Cluster (docs/cluster.md, "Starting a room mid-stream"): a membership NOTIFY also carries
-- the room's top sequence when the change was written (`floor`, 0 before its first message),
-- so a node whose first member of the room arrives through it starts the room's stream there:
-- every message committed after the change reaches the new member, on every node. One
-- function now serves both membership tables.
CREATE OR REPLACE FUNCTION ocomms_notify_membership() RETURNS trigger AS $$
DECLARE
    who uuid;
    room uuid;
    ws uuid;
    kind text;
BEGIN
    IF TG_TABLE_NAME = 'channel_members' THEN
        kind := 'channel';
        IF TG_OP = 'DELETE' THEN who := OLD.user_id; room := OLD.channel_id;
        ELSE who := NEW.user_id; room := NEW.channel_id; END IF;
        SELECT workspace_id INTO ws FROM channels WHERE id = room;
    ELSE
        kind := 'dm';
        IF TG_OP = 'DELETE' THEN who := OLD.user_id; room := OLD.conversation_id;
        ELSE who := NEW.user_id; room := NEW.conversation_id; END IF;
        SELECT workspace_id INTO ws FROM conversations WHERE id = room;
    END IF;
    -- A room deleted with its members (cascade) has no workspace left to scope to.
    IF ws IS NOT NULL THEN
        PERFORM pg_notify('ocomms_membership', json_build_object(
            'user', who, 'workspace', ws, 'kind', kind, 'room', room,
            'joined', TG_OP = 'INSERT',
            'origin', current_setting('application_name'),
            'floor', COALESCE((SELECT last FROM message_sequences WHERE target_id = room), 0))::text);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS channel_members_notify ON channel_members;
CREATE TRIGGER channel_members_notify
    AFTER INSERT OR DELETE ON channel_members
    FOR EACH ROW EXECUTE FUNCTION ocomms_notify_membership();

DROP TRIGGER IF EXISTS conversation_participants_notify ON conversation_participants;
CREATE TRIGGER conversation_participants_notify
    AFTER INSERT OR DELETE ON conversation_participants
    FOR EACH ROW EXECUTE FUNCTION ocomms_notify_membership();

-- A member removed from a workspace by the web app (a row deleted from workspace_members)
-- is announced on `ocomms_membership` like channel and DM changes, with kind "workspace"
-- and the workspace as the room: the user's live sockets in that workspace leave all its
-- rooms (contract §5). Additions need no announcement: a socket is scoped to a workspace
-- its user was a member of when it connected.
CREATE OR REPLACE FUNCTION ocomms_notify_workspace_member() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('ocomms_membership', json_build_object(
        'user', OLD.user_id, 'workspace', OLD.workspace_id, 'kind', 'workspace',
        'room', OLD.workspace_id, 'joined', false,
        'origin', current_setting('application_name'))::text);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS workspace_members_notify ON workspace_members;
CREATE TRIGGER workspace_members_notify
    AFTER DELETE ON workspace_members
    FOR EACH ROW EXECUTE FUNCTION ocomms_notify_workspace_member();

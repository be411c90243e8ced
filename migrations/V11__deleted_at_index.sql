-- Cluster (docs/cluster.md, "Outages"): after its subscriber was down, a node reads the
-- deletions made in its rooms since shortly before, as no publication brought them. This
-- index holds deleted rows only: the read costs what was deleted, and a send's insert
-- (deleted_at NULL) adds nothing to it.
CREATE INDEX IF NOT EXISTS messages_deleted_at_idx ON messages (deleted_at, id)
    WHERE deleted_at IS NOT NULL;

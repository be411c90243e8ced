-- The writer never runs maintenance itself (no ANALYZE in the ack path): autovacuum keeps
-- `messages` analyzed and its visibility map fresh on a fixed row count instead of a share of
-- the table, so a large table is not left with stale statistics for millions of rows. The
-- store's statements probe unique indexes and do not depend on these statistics; other
-- readers (the web app, history pages) do.
ALTER TABLE messages SET (
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 100000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 200000
);

-- One row per channel or conversation, updated by every send batch: vacuum it often so its
-- dead row versions do not pile up between autovacuum rounds.
ALTER TABLE message_sequences SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    fillfactor = 70
);

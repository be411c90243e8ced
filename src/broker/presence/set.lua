-- One node's presence for one (workspace, user) changes, or a dead node's share is swept;
-- decide the cluster-wide transition and publish it, atomically.
--
-- KEYS[1] user hash {P}:u:<ws>:<user>   field: node id, value: "a" (active) or "w" (away)
-- KEYS[2] live nodes {P}:nodes          zset: node id -> expiry (ms, Redis clock)
-- KEYS[3] this node's index {P}:n:<node> set of "<ws>:<user>" it has fields for
-- ARGV[1] node id, ARGV[2] "a" | "w" | "" (no socket left on this node), ARGV[3] "<ws>:<user>"
-- ARGV[4] channel, ARGV[5] PUBLISH | SPUBLISH, ARGV[6] publication header,
-- ARGV[7] packet before the status, ARGV[8] packet after it, ARGV[9] index key prefix {P}:n:
-- ARGV[10] "sweep": ARGV[1] is a dead node whose share goes (with ARGV[2] ""); returns
-- {"alive"} and changes nothing if that node beat again meanwhile.
--
-- "before" counts every field, a dead node's too: it is what clients were last told. Fields
-- of dead nodes are then dropped, the change applied, and "after" computed; an update is
-- published only when they differ, so exactly once per real change, in the order the
-- changes happened (scripts run one at a time and Redis delivers a channel in order).
local function status_of(fields)
  local s = 'offline'
  for i = 2, #fields, 2 do
    if fields[i] == 'a' then return 'active' end
    if fields[i] == 'w' then s = 'away' end
  end
  return s
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[10] == 'sweep' then
  local expiry = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if expiry and tonumber(expiry) >= now then
    return {'alive'}
  end
end
local fields = redis.call('HGETALL', KEYS[1])
local before = status_of(fields)
for i = 1, #fields, 2 do
  local node = fields[i]
  if node ~= ARGV[1] then
    local expiry = redis.call('ZSCORE', KEYS[2], node)
    if (not expiry) or tonumber(expiry) < now then
      redis.call('HDEL', KEYS[1], node)
      redis.call('SREM', ARGV[9] .. node, ARGV[3])
    end
  end
end
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('SREM', KEYS[3], ARGV[3])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('SADD', KEYS[3], ARGV[3])
end
local after = status_of(redis.call('HGETALL', KEYS[1]))
if after ~= before then
  redis.call(ARGV[5], ARGV[4], ARGV[6] .. ARGV[7] .. after .. ARGV[8])
end
return {before, after}

-- Remove a dead node's share of one (workspace, user) and publish the transition, if any.
--
-- KEYS[1] user hash, KEYS[2] live nodes, KEYS[3] the dead node's index
-- ARGV[1] dead node id, ARGV[2] "<ws>:<user>", ARGV[3] channel, ARGV[4] PUBLISH | SPUBLISH,
-- ARGV[5] header, ARGV[6] packet before the status, ARGV[7] packet after it
--
-- Returns {"alive"} and changes nothing when the node beat again meanwhile.
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
local expiry = redis.call('ZSCORE', KEYS[2], ARGV[1])
if expiry and tonumber(expiry) >= now then
  return {'alive'}
end
local before = status_of(redis.call('HGETALL', KEYS[1]))
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[2])
local after = status_of(redis.call('HGETALL', KEYS[1]))
if after ~= before then
  redis.call(ARGV[4], ARGV[3], ARGV[5] .. ARGV[6] .. after .. ARGV[7])
end
return {before, after}

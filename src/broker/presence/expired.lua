-- The nodes whose heartbeat expiry has passed (Redis clock). Read every second by every node,
-- so a dead node is swept within a second of its expiry whatever the heartbeat period.
--
-- KEYS[1] live nodes
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)

-- A node's heartbeat: it stays alive until now + ttl (Redis clock, so node clocks never
-- matter). Returns {1 if the node was not listed (first beat, or it was swept as dead),
-- the ids of nodes whose expiry has passed...}.
--
-- KEYS[1] live nodes; ARGV[1] node id, ARGV[2] ttl in ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local added = redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local out = {added}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)) do
  out[#out + 1] = node
end
return out

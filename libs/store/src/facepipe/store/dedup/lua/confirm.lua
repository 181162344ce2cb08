-- Confirm claims: the faces are indexed, their entries now suppress near-duplicates for the full
-- TTL. ARGV: ttl_ms, then per face: key prefix, hash, owner token. An entry that is no longer this
-- owner's claim (it expired, was released or forgotten, or another owner holds the hash now) is
-- left as it is: a confirmation never brings back a deleted hash. Returns how many faces hold a
-- confirmed entry of their owner afterwards.
local ttl = tonumber(ARGV[1])
local confirmed = 0
for i = 2, #ARGV, 3 do
  local okey = ARGV[i] .. 'owner:' .. ARGV[i + 1]
  local owner = ARGV[i + 2]
  local current = redis.call('GET', okey)
  if current == '?' .. owner then
    redis.call('SET', okey, owner, 'PX', ttl)
    confirmed = confirmed + 1
  elseif current == owner then
    confirmed = confirmed + 1
  end
end
return confirmed

-- ARGV: key prefix, layout hash suffix, owner-token prefix ('' = any owner), then per hash:
-- hash, n, own buckets... Deletes the owner entry (only if the owner matches) and the hash's
-- records. Returns how many hashes were forgotten.
local prefix, want = ARGV[1], ARGV[3]
local near = prefix .. ARGV[2]
local now_s = tonumber(redis.call('TIME')[1])
local removed = 0
local i = 4
while i <= #ARGV do
  local hash, n = ARGV[i], tonumber(ARGV[i + 1])
  local okey = prefix .. 'owner:' .. hash
  local current = redis.call('GET', okey)
  if current and (want == '' or string.sub(current, 1, #want) == want) then
    redis.call('DEL', okey)
    local hi, lo = tonumber(string.sub(hash, 1, 8), 16), tonumber(string.sub(hash, 9, 16), 16)
    for k = i + 2, i + 1 + n do
      local old = redis.call('HGET', near, ARGV[k])
      if old then
        local rest, dropped = without(old, hi, lo, now_s)
        if rest == '' then
          redis.call('HDEL', near, ARGV[k])
        elseif dropped then
          redis.call('HSET', near, ARGV[k], rest)
        end
      end
    end
    removed = removed + 1
  end
  i = i + 2 + n
end
return removed

-- Forget hashes: their owner entries, their records in the buckets and their entries in the
-- write log, so no byte of them is left. ARGV: key prefix, layout hash suffix, mode, then per
-- hash: hash, want, n, own buckets...
-- mode 'owner': forget the hash when its owner token (a claim's too) starts with want ('' = any
-- owner), or when nobody owns it any more (an expired claim leaves records that match nothing).
-- mode 'release': forget it only while it is exactly the claim '?' .. want (a face that will not
-- be indexed after all; a confirmed entry, or another owner's claim, stays).
-- Forgetting moves the tenant's sequence (without a log entry): an optimistic commit that read
-- the buckets before is then made against the buckets as they are now, and cannot write a
-- forgotten record back. Returns how many owner entries were deleted.
local prefix, mode = ARGV[1], ARGV[3]
local near = prefix .. ARGV[2]
local now_s = tonumber(redis.call('TIME')[1])
local removed, changed = 0, false
local log = redis.call('HGET', near, 'log')
local i = 4
while i <= #ARGV do
  local hash, want, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local okey = prefix .. 'owner:' .. hash
  local current = redis.call('GET', okey)
  local forget
  if mode == 'release' then
    forget = current == '?' .. want
  elseif current then
    local token = owner_of(current)
    forget = want == '' or string.sub(token, 1, #want) == want
  else
    forget = true
  end
  if forget then
    if current then
      redis.call('DEL', okey)
      removed = removed + 1
    end
    local hi, lo = tonumber(string.sub(hash, 1, 8), 16), tonumber(string.sub(hash, 9, 16), 16)
    for k = i + 3, i + 2 + n do
      local old = redis.call('HGET', near, ARGV[k])
      if old then
        local rest, dropped = without(old, hi, lo, now_s)
        if rest == '' then
          redis.call('HDEL', near, ARGV[k])
        elseif dropped then
          redis.call('HSET', near, ARGV[k], rest)
        end
        changed = changed or dropped
      end
    end
    if log then
      local rest = log_without(log, hi, lo)
      changed = changed or #rest ~= #log
      log = rest
    end
  end
  i = i + 3 + n
end
if changed and redis.call('EXISTS', near) == 1 then
  local seq = tonumber(redis.call('HGET', near, 'seq') or '0') + 1
  redis.call('HSET', near, 'seq', string.format('%d', seq), 'log', log or '')
end
return removed

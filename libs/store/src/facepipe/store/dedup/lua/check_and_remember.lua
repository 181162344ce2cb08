-- The whole decision inside Redis (the fallback for a tenant written to too often for optimistic
-- commits, and the read-only check when there is no optimistic read).
-- ARGV: mode ('check'|'remember'), key prefix, layout hash suffix, ttl_ms, max_hamming, face count,
-- log entries kept, then per face: hash, owner token, image-set suffix, n_own, n_lookup, lookup
-- buckets... (the first n_own lookups are the face's own buckets).
-- Returns per face {is_dup, owner token, matched hash, distance}.
local mode, prefix = ARGV[1], ARGV[2]
local near = prefix .. ARGV[3]
local ttl, maxd, nfaces, keep = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local expiry_s = math.ceil((now_s * 1000 + math.floor(tonumber(t[2]) / 1000) + ttl) / 1000)

local results = {}
local i = 8
for f = 1, nfaces do
  local hash, owner, img = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local nown, nlook = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  local first = i + 5
  i = first + nlook

  local hi, lo = tonumber(string.sub(hash, 1, 8), 16), tonumber(string.sub(hash, 9, 16), 16)
  local okey = prefix .. 'owner:' .. hash
  local dup_owner, dup_hash, dup_dist = nil, '', -1
  local buckets = {}
  local current = redis.call('GET', okey)
  if current and current ~= owner then
    dup_owner, dup_hash, dup_dist = current, hash, 0
  elseif nlook > 0 then
    buckets = hmget(near, ARGV, first, first + nlook - 1)
    local seen = {}
    for b = 1, nlook do
      local blob = buckets[b]
      if blob then
        for pos = 1, #blob - RECORD + 1, RECORD do
          local chi, clo = struct.unpack('>I4I4', blob, pos)
          local d = popcount32(bxor(chi, hi)) + popcount32(bxor(clo, lo))
          -- d == 0 is this very hash: its owner key (read above) has the answer.
          if d > 0 and d <= maxd then
            local cand = string.format('%08x%08x', chi, clo)
            if not seen[cand] then
              seen[cand] = true
              -- The owner key decides: an expired or forgotten hash is not remembered.
              local o = redis.call('GET', prefix .. 'owner:' .. cand)
              if o and o ~= owner then
                dup_owner, dup_hash, dup_dist = o, cand, d
                break
              end
            end
          end
        end
        if dup_owner then break end
      end
    end
  end

  if dup_owner then
    results[f] = {1, dup_owner, dup_hash, dup_dist}
  else
    if mode == 'remember' then
      local record = struct.pack('>I4I4I4', hi, lo, expiry_s)
      local fields, values = {}, {}
      for w = 1, nown do
        fields[w] = ARGV[first + w - 1]
        values[w] = appended(buckets[w], hi, lo, record, now_s)
      end
      -- Every write moves the tenant's sequence and is logged: see commit.lua.
      local state = redis.call('HMGET', near, 'seq', 'log')
      remember(prefix, near, {{hi, lo, hash, owner, prefix .. img}}, state, fields, values, ttl, keep)
    end
    results[f] = {0, '', '', -1}
  end
end
return results

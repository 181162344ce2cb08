-- The whole decision inside Redis (the fallback for a tenant written to too often for optimistic
-- commits, and the read-only check when there is no optimistic read).
-- ARGV: mode ('check'|'remember'|'claim'), key prefix, layout hash suffix, ttl_ms, max_hamming,
-- face count, log entries kept, claim ttl_ms, then per face: hash, owner token, image-set suffix,
-- n_own, n_lookup, lookup buckets... (the first n_own lookups are the face's own buckets).
-- A face within the threshold of a remembered face of another owner is a duplicate; one within
-- the threshold only of faces others have claimed (still being indexed) is pending: neither
-- skipped nor remembered, it waits until those are confirmed or released. 'claim' remembers the
-- new faces as claims ('?'-marked owner, claim ttl), 'remember' as confirmed.
-- Returns per face {code (0 new, 1 duplicate, 2 pending), owner token, matched hash, distance}.
local mode, prefix = ARGV[1], ARGV[2]
local near = prefix .. ARGV[3]
local ttl, maxd, nfaces, keep = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local claim_ttl = tonumber(ARGV[8])
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local expiry_s = math.ceil((now_s * 1000 + math.floor(tonumber(t[2]) / 1000) + ttl) / 1000)

-- Whether two owner tokens (image:face:event) are faces of one message: same image and event.
local function same_message(a, b)
  local ai, ae = string.match(a, '^([^:]*):[^:]*:(.*)$')
  local bi, be = string.match(b, '^([^:]*):[^:]*:(.*)$')
  return ai == bi and ae == be
end
-- A claim of another message decides nothing yet; one of this message is indexed with this face.
local function undecided(token, claimed, owner) return claimed and not same_message(token, owner) end

local results = {}
local i = 9
for f = 1, nfaces do
  local hash, owner, img = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local nown, nlook = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  local first = i + 5
  i = first + nlook

  local hi, lo = tonumber(string.sub(hash, 1, 8), 16), tonumber(string.sub(hash, 9, 16), 16)
  local okey = prefix .. 'owner:' .. hash
  local dup, pend = nil, nil  -- {owner token, hash, distance}
  local buckets = {}
  local current = redis.call('GET', okey)
  if current then
    local token, claimed = owner_of(current)
    if token ~= owner then
      if undecided(token, claimed, owner) then pend = {token, hash, 0} else dup = {token, hash, 0} end
    end
  end
  if not dup and nlook > 0 then
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
              if o then
                local token, claimed = owner_of(o)
                if token ~= owner then
                  if not undecided(token, claimed, owner) then
                    dup = {token, cand, d}
                    break
                  elseif not pend or d < pend[3] then
                    pend = {token, cand, d}
                  end
                end
              end
            end
          end
        end
        if dup then break end
      end
    end
  end

  if dup then
    results[f] = {1, dup[1], dup[2], dup[3]}
  elseif pend then
    results[f] = {2, pend[1], pend[2], pend[3]}
  else
    -- A claim never downgrades this owner's confirmed entry (a redelivery after the face was indexed).
    if mode ~= 'check' and not (mode == 'claim' and current == owner) then
      local record = struct.pack('>I4I4I4', hi, lo, expiry_s)
      local fields, values = {}, {}
      for w = 1, nown do
        fields[w] = ARGV[first + w - 1]
        values[w] = appended(buckets[w], hi, lo, record, now_s)
      end
      local value, owner_ttl = owner, ttl
      if mode == 'claim' then value, owner_ttl = '?' .. owner, claim_ttl end
      -- Every write moves the tenant's sequence and is logged: see commit.lua.
      local state = redis.call('HMGET', near, 'seq', 'log')
      remember(prefix, near, {{hi, lo, hash, value, prefix .. img}}, state, fields, values, ttl, keep, owner_ttl)
    end
    results[f] = {0, '', '', -1}
  end
end
return results

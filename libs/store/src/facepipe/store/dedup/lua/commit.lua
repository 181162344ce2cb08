-- The optimistic path's commit, for several tenants at once. ARGV: ttl_ms, layout hash suffix,
-- max_hamming, log entries kept, group count, then per group (one tenant): key prefix, the
-- tenant's sequence as read, its owner keys' ttl_ms (a claim's is shorter), face count, and per
-- face: hash, owner value (a claim is marked with '?'), image-set suffix, n_own,
-- own buckets; then the own buckets' new values as the caller computed them from its read (count,
-- then field, value pairs). A group is written when its tenant's sequence is unchanged (with the
-- caller's values), or when every write logged since the read is farther than max_hamming from
-- all of its faces, so those writes cannot have changed its decisions (its records are then
-- appended to the buckets as they are now); otherwise nothing of it is written.
-- Returns 1 (written) or 0 (refused) per group.
local ttl, suffix, maxd, keep = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local expiry_s = math.ceil((now_s * 1000 + math.floor(tonumber(t[2]) / 1000) + ttl) / 1000)
local written = {}
local i = 6
for g = 1, tonumber(ARGV[5]) do
  local prefix, seq_read = ARGV[i], tonumber(ARGV[i + 1])
  local owner_ttl, nfaces = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  local near = prefix .. suffix
  i = i + 4
  local faces = {}
  for f = 1, nfaces do
    local hash = ARGV[i]
    local nown = tonumber(ARGV[i + 3])
    local hi, lo = tonumber(string.sub(hash, 1, 8), 16), tonumber(string.sub(hash, 9, 16), 16)
    -- remember()'s face, and where its own buckets are in ARGV (from, to)
    faces[f] = {hi, lo, hash, ARGV[i + 1], prefix .. ARGV[i + 2], i + 4, i + 3 + nown}
    i = i + 4 + nown
  end
  local nvalues, values_at = tonumber(ARGV[i]), i + 1
  i = values_at + 2 * nvalues
  local state = redis.call('HMGET', near, 'seq', 'log')
  local seq = tonumber(state[1] or '0')
  local unchanged = seq == seq_read
  -- A sequence below the one read means the tenant's hash expired and started again: refuse.
  local ok = unchanged or (seq > seq_read and not changed_since(state[2], seq_read, faces, maxd))
  if ok then
    local fields, slot = {}, {}
    for _, face in ipairs(faces) do
      for k = face[6], face[7] do
        if not slot[ARGV[k]] then
          fields[#fields + 1] = ARGV[k]
          slot[ARGV[k]] = #fields
        end
      end
    end
    local values = {}
    if unchanged then
      -- Nothing was written since the read: the buckets the caller computed from it are current.
      for k = values_at, values_at + 2 * nvalues - 1, 2 do values[slot[ARGV[k]]] = ARGV[k + 1] end
    else
      if #fields > 0 then values = redis.call('HMGET', near, unpack(fields)) end
      for _, face in ipairs(faces) do
        local record = struct.pack('>I4I4I4', face[1], face[2], expiry_s)
        for k = face[6], face[7] do
          local j = slot[ARGV[k]]
          values[j] = appended(values[j], face[1], face[2], record, now_s)
        end
      end
    end
    remember(prefix, near, faces, state, fields, values, ttl, keep, owner_ttl)
  end
  written[g] = ok and 1 or 0
end
return written

-- Shared by every dedup script (loaded in front of each one): bucket records, a branch-free
-- popcount (LuaBitOp works on 32-bit halves), the tenant's write log, and remember(), the one
-- place a face is written.
local band, bxor, rshift = bit.band, bit.bxor, bit.rshift
local RECORD = 12  -- hash high 32 bits, low 32 bits, expiry (unix seconds), all big-endian
local function popcount32(x)
  x = x - band(rshift(x, 1), 0x55555555)
  x = band(x, 0x33333333) + band(rshift(x, 2), 0x33333333)
  x = band(x + rshift(x, 4), 0x0F0F0F0F)
  x = x + rshift(x, 8)
  x = x + rshift(x, 16)
  return band(x, 0x3F)
end
-- The bucket without the records of hash (hi, lo) and without the expired ones ('' if none
-- is left), and whether anything was dropped.
local function without(blob, hi, lo, now_s)
  local kept, dropped = {}, false
  for pos = 1, #blob - RECORD + 1, RECORD do
    local chi, clo, cexp = struct.unpack('>I4I4I4', blob, pos)
    if cexp <= now_s or (chi == hi and clo == lo) then
      dropped = true
    else
      kept[#kept + 1] = string.sub(blob, pos, pos + RECORD - 1)
    end
  end
  return table.concat(kept), dropped
end
-- Whether the bucket holds a record of the hash given as its 8 bytes (a plain find, then alignment).
local function holds(blob, key8)
  local from = 1
  while true do
    local pos = string.find(blob, key8, from, true)
    if not pos then return false end
    if (pos - 1) % RECORD == 0 then return true end
    from = pos + 1
  end
end
-- The bucket with this hash's record appended. Usually a plain append: the records are in time
-- order, so the bucket is rebuilt only when its oldest record has expired or the hash is there.
local function appended(old, hi, lo, record, now_s)
  if not old or old == '' then return record end
  if struct.unpack('>I4', old, 9) > now_s and not holds(old, string.sub(record, 1, 8)) then
    return old .. record
  end
  return (without(old, hi, lo, now_s)) .. record
end
-- The tenant's write log (field 'log'): the hashes remembered by the latest writes, each as the
-- write's sequence number (6 bytes) and the hash (8 bytes), oldest first. A commit that read an
-- older sequence is still valid when nothing logged since is near one of its faces.
local LOG_RECORD = 14
local function logged(log, seq, faces, keep)
  local entries = {}
  for _, face in ipairs(faces) do entries[#entries + 1] = struct.pack('>I6I4I4', seq, face[1], face[2]) end
  log = (log or '') .. table.concat(entries)
  if #log > keep * LOG_RECORD then
    -- Keep the newest entries, cut at a write's boundary: the log always holds every entry of
    -- every write from its oldest one on.
    local from = #log - keep * LOG_RECORD + 1
    local cut = struct.unpack('>I6', log, from - LOG_RECORD)
    while from <= #log and struct.unpack('>I6', log, from) == cut do from = from + LOG_RECORD end
    log = string.sub(log, from)
  end
  return log
end
local function changed_since(log, seq_read, faces, maxd)
  if not log or #log == 0 or struct.unpack('>I6', log, 1) > seq_read + 1 then
    return true  -- the log no longer reaches back to the first write after the read
  end
  for pos = 1, #log - LOG_RECORD + 1, LOG_RECORD do
    local seq, chi, clo = struct.unpack('>I6I4I4', log, pos)
    if seq > seq_read then
      for _, face in ipairs(faces) do
        if popcount32(bxor(chi, face[1])) + popcount32(bxor(clo, face[2])) <= maxd then return true end
      end
    end
  end
  return false
end
-- The log without the entries of hash (hi, lo), for forgetting it ('' if none is left).
local function log_without(log, hi, lo)
  local kept = {}
  for pos = 1, #log - LOG_RECORD + 1, LOG_RECORD do
    local _, chi, clo = struct.unpack('>I6I4I4', log, pos)
    if chi ~= hi or clo ~= lo then kept[#kept + 1] = string.sub(log, pos, pos + LOG_RECORD - 1) end
  end
  return table.concat(kept)
end
-- An owner key's value: the owner token, marked with a leading '?' while it is only a claim (the
-- face is being indexed; confirm.lua drops the mark once it is). Returns the token and whether it
-- is a claim.
local function owner_of(value)
  if string.byte(value, 1) == 63 then return string.sub(value, 2), true end
  return value, false
end
-- Remember faces of one tenant: each face's owner key (for owner_ttl ms) and image set, the
-- buckets' new values (fields[j] -> values[j]), and one more write in the tenant's sequence and
-- log, read as state ({seq, log}). A face is {hash high, hash low, hash hex, owner value (a claim
-- is marked), image-set key}.
local function remember(prefix, near, faces, state, fields, values, ttl, keep, owner_ttl)
  local seq = tonumber(state[1] or '0') + 1
  local expiring = {}
  for _, face in ipairs(faces) do
    redis.call('SET', prefix .. 'owner:' .. face[3], face[4], 'PX', owner_ttl)
    redis.call('SADD', face[5], face[3])
    if not expiring[face[5]] then
      expiring[face[5]] = true
      redis.call('PEXPIRE', face[5], ttl)
    end
  end
  local pairs_ = {'seq', string.format('%d', seq), 'log', logged(state[2], seq, faces, keep)}
  for j = 1, #fields do
    pairs_[#pairs_ + 1] = fields[j]
    pairs_[#pairs_ + 1] = values[j]
  end
  redis.call('HSET', near, unpack(pairs_))
  redis.call('PEXPIRE', near, ttl)
end
-- HMGET of any number of fields (unpack has a C-stack limit); false for a missing field.
local function hmget(key, fields, first, last)
  local values = {}
  for from = first, last, 1000 do
    local part = redis.call('HMGET', key, unpack(fields, from, math.min(from + 999, last)))
    for j = 1, #part do values[#values + 1] = part[j] end
  end
  return values
end

#!lua name=wsgw
-- wsgw's Redis Functions, loaded by every gateway at start-up with FUNCTION LOAD REPLACE.
--
-- FCALL wsgw_publish 2 <prefix>seq <prefix>history:<channel>  <channel> <event> <data-json> [<ttl_ms> <maxlen> [<exclude> [<idempotency_key>]]]
--
-- Takes the next globally monotonic id (<ms>-<seq>), appends the event frame to the channel's
-- history stream (at least its last maxlen events, expiring ttl_ms after its last event),
-- records what trimming removed in <prefix>meta:<channel>, publishes the exact client frame on the
-- channel's pub/sub channel <prefix><channel>, and returns the id. <exclude> is a
-- comma-separated list of connection ids that must not receive the event; it travels as a
-- header line ("#x:<ids>\n") before the frame, which gateways strip. In a Redis Cluster the
-- header also names the channel's previous durable event ("#x:<ids>,~<ms>-<seq>\n", or
-- "#x:~<ms>-<seq>\n" without an exclude list).
--
-- Input is checked before anything is written: <ttl_ms> must be a positive integer and
-- <maxlen> a non-negative integer (absent or empty: the <prefix>config defaults), and
-- <data-json> standard JSON (no NaN, Infinity, hex, leading zeros or '+', which cjson
-- accepts). An event published with maxlen 0 is live-only: it is recorded as trimmed in the
-- channel's meta, so a replay across its id is never reported as recovered.
--
-- <idempotency_key> (1..256 bytes of printable ASCII without space, '!'..'~'): the first call
-- with a key stores and publishes as usual and records its id in <prefix>idem:<key> for 24 h;
-- a later call with the same key (on any channel, with any body) within those 24 h stores and
-- publishes nothing and returns that first id. The check and the record happen in this one
-- call, so two racing retries cannot both store. The key is shared with the gateways' HTTP
-- API (the Idempotency-Key header), which calls this Function.
--
-- Redis Cluster (docs/backends.md, "Publishing into a Redis Cluster"): a channel belongs to
-- id-shard s = CRC-32 (IEEE, as zlib's crc32) of its name, modulo 16, and its keys carry the
-- hash tag {s}: FCALL wsgw_publish 2 <prefix>{s}seq <prefix>{s}history:<channel> ... Every key
-- the call touches then has that tag, so it runs on the one primary holding the shard. Each
-- shard has its own sequence; ids name their shard (<s>~<ms>-<seq>), the event is published
-- with SPUBLISH on <prefix>{s}<channel>, and keys whose tag is not the channel's shard are
-- refused. Config, epoch and idempotency keys are per shard too.

local function valid_channel(c)
  return #c >= 1 and #c <= 256 and not string.find(c, '[^%w_%.:@=/%-]')
end

local function valid_exclude(x)
  return #x <= 65536 and not string.find(x, '[^%w_,%-]')
end

-- How long an idempotency key remembers its first event id: 24 h.
local IDEMPOTENCY_TTL_MS = 86400000

local function valid_idempotency_key(k)
  return #k >= 1 and #k <= 256 and not string.find(k, '[^!-~]')
end

-- A JSON number as RFC 8259 writes it.
local function standard_number(t)
  local int, rest = string.match(t, '^%-?(%d+)(.*)$')
  if not int or (#int > 1 and string.sub(int, 1, 1) == '0') then
    return false
  end
  rest = string.match(rest, '^%.%d+(.*)$') or rest
  return rest == '' or string.find(rest, '^[eE][%+%-]?%d+$') ~= nil
end

-- Text cjson already parsed: every token outside strings is standard (cjson also takes NaN,
-- Infinity, 0x10, 01, +1).
local function standard_json(s)
  local i, n = 1, #s
  while i <= n do
    local _, b = string.find(s, '^[ \t\n\r{}%[%],:]+', i)
    if b then
      i = b + 1
    elseif string.byte(s, i) == 34 then
      local j = i + 1
      while true do
        local q = string.find(s, '["\\]', j)
        if not q then
          return false
        end
        if string.byte(s, q) == 92 then
          j = q + 2
        else
          i = q + 1
          break
        end
      end
    else
      local a, e = string.find(s, '^[%w%+%-%.]+', i)
      if not a then
        return false
      end
      local tok = string.sub(s, a, e)
      if not (tok == 'true' or tok == 'false' or tok == 'null' or standard_number(tok)) then
        return false
      end
      i = e + 1
    end
  end
  return true
end

-- An integer argument: nil when absent or empty, false when not `min`.. in decimal digits.
local function int_arg(v, min)
  if v == nil or v == '' then
    return nil
  end
  if #v > 15 or not string.find(v, '^%d+$') then
    return false
  end
  local n = tonumber(v)
  if n < min then
    return false
  end
  return n
end

-- Redis Cluster: how many id-shards channels are spread over (docs/scaling.md).
local ID_SHARDS = 16

-- CRC-32 (IEEE 802.3, reflected, as zlib's crc32), for a channel's id-shard. The table is
-- built on first use: the `bit` library is not available while a library loads.
local CRC_TABLE = nil

local function crc32(s)
  if not CRC_TABLE then
    CRC_TABLE = {}
    for i = 0, 255 do
      local c = i
      for _ = 1, 8 do
        if bit.band(c, 1) == 1 then
          c = bit.bxor(bit.rshift(c, 1), 0xEDB88320)
        else
          c = bit.rshift(c, 1)
        end
      end
      CRC_TABLE[i] = c
    end
  end
  local c = bit.bnot(0)
  for i = 1, #s do
    c = bit.bxor(bit.rshift(c, 8), CRC_TABLE[bit.band(bit.bxor(c, string.byte(s, i)), 0xFF)])
  end
  c = bit.bnot(c)
  if c < 0 then
    c = c + 4294967296
  end
  return c
end

local function id_newer(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b or '', '^(%d+)-(%d+)$')
  if not bm then
    return true
  end
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end

-- How far a history may grow past its maxlen before it is trimmed back to maxlen: an eighth,
-- at most 64 events (none below 8).
local function trim_slack(maxlen)
  return math.min(64, math.floor(maxlen / 8))
end

-- Records that history after ids up to `id` is incomplete (never lowers the mark).
local function mark_trimmed(meta_key, id)
  if id_newer(id, redis.call('HGET', meta_key, 'trimmed')) then
    redis.call('HSET', meta_key, 'trimmed', id)
  end
end

local function publish(keys, args)
  local seq_key, hist_key = keys[1], keys[2]
  if not seq_key or not hist_key or string.sub(seq_key, -3) ~= 'seq' then
    return redis.error_reply('ERR wsgw_publish: keys are <prefix>seq <prefix>history:<channel>')
  end
  local prefix = string.sub(seq_key, 1, #seq_key - 3)
  local channel, event, data = args[1], args[2], args[3]
  if not channel or not event or not data then
    return redis.error_reply('ERR wsgw_publish: arguments are <channel> <event> <data-json> [<ttl_ms> <maxlen> [<exclude> [<idempotency_key>]]]')
  end
  if not valid_channel(channel) or string.find(channel, '%*') then
    return redis.error_reply('ERR wsgw_publish: invalid channel name')
  end
  if channel == 'control' or string.sub(channel, 1, 8) == 'control:' then
    return redis.error_reply('ERR wsgw_publish: control and control:* are reserved for the gateway')
  end
  if hist_key ~= prefix .. 'history:' .. channel then
    return redis.error_reply('ERR wsgw_publish: second key must be ' .. prefix .. 'history:' .. channel)
  end
  -- Redis Cluster: the prefix ends with the channel's id-shard tag, {s}.
  local shard = string.match(prefix, '{(%d+)}$')
  if shard then
    local want = crc32(channel) % ID_SHARDS
    if tonumber(shard) ~= want or shard ~= tostring(want) then
      local base = string.sub(prefix, 1, #prefix - #shard - 2)
      return redis.error_reply('ERR wsgw_publish: channel ' .. channel .. ' is in id-shard ' .. want
        .. '; keys must be ' .. base .. '{' .. want .. '}seq ' .. base .. '{' .. want .. '}history:' .. channel)
    end
  end
  if #event < 1 or #event > 128 then
    return redis.error_reply('ERR wsgw_publish: event must be 1..128 bytes')
  end
  if not pcall(cjson.decode, data) or not standard_json(data) then
    return redis.error_reply('ERR wsgw_publish: data is not valid JSON')
  end
  local ttl = int_arg(args[4], 1)
  if ttl == false then
    return redis.error_reply('ERR wsgw_publish: ttl_ms must be a positive integer')
  end
  local maxlen = int_arg(args[5], 0)
  if maxlen == false then
    return redis.error_reply('ERR wsgw_publish: maxlen must be a non-negative integer')
  end
  if not ttl or not maxlen then
    local cfg = redis.call('HMGET', prefix .. 'config', 'history_ttl_ms', 'history_size')
    ttl = ttl or tonumber(cfg[1]) or 3600000
    maxlen = maxlen or tonumber(cfg[2]) or 1000
  end
  local exclude = args[6] or ''
  if not valid_exclude(exclude) then
    return redis.error_reply('ERR wsgw_publish: exclude is a comma-separated list of connection ids')
  end
  local idem_key = nil
  if args[7] ~= nil then
    if not valid_idempotency_key(args[7]) then
      return redis.error_reply('ERR wsgw_publish: idempotency_key must be 1..256 bytes of printable ASCII without spaces (! to ~)')
    end
    idem_key = prefix .. 'idem:' .. args[7]
    -- A retry: the first call's id, and nothing stored or published again.
    local first = redis.call('GET', idem_key)
    if first then
      return first
    end
  end

  local meta_key = prefix .. 'meta:' .. channel
  if shard then
    -- Redis Cluster: while the shard's slot migrates, a key this call does not declare (the
    -- epoch, the meta) may already be on the target, and touching it fails the call. Touch
    -- them before the first write, so such a call fails whole (the caller retries) instead of
    -- storing half an event.
    redis.call('EXISTS', prefix .. 'epoch')
    redis.call('EXISTS', meta_key)
  end
  -- Redis Cluster: the channel's previous durable event travels with this one on pub/sub, so a
  -- gateway can tell it missed a message (docs/scaling.md, "Holes in a channel").
  local prev = shard and redis.call('HGET', meta_key, 'last')

  local t = redis.call('TIME')
  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  -- The epoch marks when this Redis's data began: ids older than it cannot be replayed.
  redis.call('SET', prefix .. 'epoch', ms, 'NX')
  local seq = 0
  local last = redis.call('GET', seq_key)
  if last then
    local lms, lseq = string.match(last, '^(%d+)-(%d+)$')
    lms, lseq = tonumber(lms), tonumber(lseq)
    if lms and lms >= ms then
      ms = lms
      seq = lseq + 1
    end
  end
  local id = string.format('%d-%d', ms, seq)
  redis.call('SET', seq_key, id)
  -- What clients see: in a cluster the id names its shard.
  local event_id = id
  if shard then
    event_id = shard .. '~' .. id
  end
  if idem_key then
    redis.call('SET', idem_key, event_id, 'PX', IDEMPOTENCY_TTL_MS)
  end

  local frame = '{"type":"event","event_id":"' .. event_id .. '","channel":' .. cjson.encode(channel)
    .. ',"event":' .. cjson.encode(event) .. ',"data":' .. data .. ',"ts":' .. string.format('%d', ms) .. '}'

  if maxlen > 0 then
    if exclude ~= '' then
      redis.call('XADD', hist_key, id, 'f', frame, 'x', exclude)
    else
      redis.call('XADD', hist_key, id, 'f', frame)
    end
    local len = redis.call('XLEN', hist_key)
    if len == 1 then
      -- This event began the stream. An older stream that expired left its meta behind (the
      -- meta outlives it): history up to that stream's last event is gone. With no meta either,
      -- the meta begins now: it knows of no event before, and only its absence until now
      -- vouches for the 2 x TTL before.
      local old_last = redis.call('HGET', meta_key, 'last')
      if old_last then
        mark_trimmed(meta_key, old_last)
      else
        redis.call('HSET', meta_key, 'since', ms)
      end
    end
    -- Trimmed back to maxlen once it is trim_slack over, not by one entry on every publish:
    -- at the cap, trimming each time was a quarter of this call's cost.
    if len > maxlen + trim_slack(maxlen) then
      -- Trimming does not record what it removed; we do, so replays can tell a gap.
      local old = redis.call('XRANGE', hist_key, '-', '+', 'COUNT', len - maxlen)
      redis.call('XTRIM', hist_key, 'MAXLEN', maxlen)
      mark_trimmed(meta_key, old[#old][1])
    end
    redis.call('HSET', meta_key, 'last', id)
    redis.call('PEXPIRE', hist_key, ttl)
    -- The meta outlives the stream, so an expired history is still known to have existed.
    redis.call('PEXPIRE', meta_key, ttl * 2)
  else
    -- Live-only: kept nowhere, so no replay across it can be complete.
    mark_trimmed(meta_key, id)
    redis.call('PEXPIRE', meta_key, ttl * 2)
  end

  -- The header line: the exclude list, then (Redis Cluster) `~<prev>`; '~' is in no
  -- connection id, so a gateway that knows only the exclude list ignores it.
  local header = exclude
  if prev then
    if header ~= '' then
      header = header .. ','
    end
    header = header .. '~' .. prev
  end
  local payload = frame
  if header ~= '' then
    payload = '#x:' .. header .. '\n' .. frame
  end
  if shard then
    redis.call('SPUBLISH', prefix .. channel, payload)
  else
    redis.call('PUBLISH', prefix .. channel, payload)
  end
  return event_id
end

redis.register_function('wsgw_publish', publish)

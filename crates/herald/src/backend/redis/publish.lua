-- Publish a batch: for each event, XADD to the topic's stream and PUBLISH (or
-- SPUBLISH) "<id>\n<event>\n<data>" on the topic's channel, in one atomic step, so
-- live order equals stream order per topic and the position is the stream ID.
--
-- Trimming is exact (MAXLEN = n) and records the newest trimmed ID in the topic's
-- horizon key: a cursor older than it missed events that are gone (XINFO's
-- max-deleted-entry-id does not count trimming, so it cannot tell).
--
-- A stream created here (new, or again after it expired, was flushed or evicted)
-- keeps the topic's gap mark as its horizon when a resume left one (see
-- resume.lua); without one, its horizon is its first ID: nobody can prove they saw
-- everything before it, so every older cursor gets a reset.
--
-- KEYS: stream1, channel1, horizon1, stream2, channel2, horizon2, ...
-- ARGV: maxlen, ttl_ms, publish command, then event1, data1, event2, data2, ...
local maxlen, ttl, publish = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local ids = {}
for i = 1, #KEYS / 3 do
  local stream, channel, horizon = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local event, data = ARGV[2 + 2 * i], ARGV[3 + 2 * i]
  local len = redis.call('XLEN', stream)
  local created = len == 0 and redis.call('EXISTS', stream) == 0
  if maxlen > 0 and len >= maxlen then
    local gone = redis.call('XRANGE', stream, '-', '+', 'COUNT', len - maxlen + 1)
    redis.call('SET', horizon, gone[#gone][1], 'PX', ttl)
  end
  local mark = created and redis.call('GET', horizon)
  local id = redis.call('XADD', stream, 'MAXLEN', maxlen, '*', 'e', event, 'd', data)
  if maxlen == 0 then
    redis.call('SET', horizon, id, 'PX', ttl)
  elseif created then
    if mark and string.sub(mark, 1, 1) == 'g' then
      redis.call('SET', horizon, string.sub(mark, 2), 'PX', ttl)
    else
      redis.call('SET', horizon, id, 'PX', ttl)
    end
  end
  redis.call('PEXPIRE', stream, ttl)
  redis.call('PEXPIRE', horizon, ttl)
  redis.call(publish, channel, id .. '\n' .. event .. '\n' .. data)
  ids[i] = id
end
return ids

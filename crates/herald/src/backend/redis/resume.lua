-- What a resume needs from a topic's stream, read atomically:
-- { last-generated-id, horizon (newest ID no longer retained, "0-0" if none),
--   entries from ARGV[1] on }.
--
-- A missing stream (never published, expired, flushed or evicted) answers
-- { "", gap, {} }, where gap is the topic's gap mark: a position just before now,
-- kept in the horizon key as "g<id>" until the stream is created again (the next
-- publish keeps it as the new stream's horizon). A stream opened meanwhile takes the
-- mark as its cursor, so it resumes exactly into the new stream; any other cursor
-- is older than the mark (or from a stream that is gone) and gets a reset. Each
-- read renews the mark's TTL; a topic that no stream opened on for the whole TTL
-- loses it, and cursors from before then get a reset.
-- KEYS: stream, horizon. ARGV[1]: the first position to read, or "" (head only);
-- ARGV[2]: the horizon key's TTL in milliseconds.
local stream, horizon = KEYS[1], KEYS[2]
if redis.call('EXISTS', stream) == 0 then
  local mark = redis.call('GET', horizon)
  if mark and string.sub(mark, 1, 1) == 'g' then
    -- Kept while streams keep opening on the quiet topic: a mark that expired
    -- would reset their cursors.
    redis.call('PEXPIRE', horizon, ARGV[2])
    return { '', string.sub(mark, 2), {} }
  end
  -- Not a gap mark: absent, or left over from a stream that is gone.
  local t = redis.call('TIME')
  local gap = string.format('%d-0', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - 1)
  redis.call('SET', horizon, 'g' .. gap, 'PX', ARGV[2])
  return { '', gap, {} }
end
local last = '0-0'
local info = redis.call('XINFO', 'STREAM', stream)
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then last = info[i + 1] end
end
local trimmed = redis.call('GET', horizon) or '0-0'
if string.sub(trimmed, 1, 1) == 'g' then trimmed = string.sub(trimmed, 2) end
local entries = {}
if ARGV[1] ~= '' then
  entries = redis.call('XRANGE', stream, ARGV[1], '+')
end
return { last, trimmed, entries }

-- What a resume needs from a topic's stream, read atomically:
-- { last-generated-id, horizon (newest trimmed ID, "0-0" if none), entries after ARGV[1] }.
-- A missing stream (never published, or expired) answers { "", "", {} }.
-- KEYS: stream, horizon. ARGV[1]: the position to read after, or "" (head only).
local stream, horizon = KEYS[1], KEYS[2]
if redis.call('EXISTS', stream) == 0 then
  return { '', '', {} }
end
local last = '0-0'
local info = redis.call('XINFO', 'STREAM', stream)
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then last = info[i + 1] end
end
local trimmed = redis.call('GET', horizon) or '0-0'
local entries = {}
if ARGV[1] ~= '' then
  entries = redis.call('XRANGE', stream, '(' .. ARGV[1], '+')
end
return { last, trimmed, entries }

"""The Lua scripts of the Redis job store: each operation that writes is one script, so it is
atomic on the server whichever gateways run it at once.

Keys, under the prefix ``KEYS[1]`` (``bis:``):

- ``job:<id>``, a hash: ``sig state prio created attempts started finished webhook status answer
  body seq wh_state wh_attempts batch bindex custom idem entry owner keyname`` (``owner``: the
  gateway that runs it; ``keyname``: the name of the API key that submitted it);
- ``q:<signature>:<priority>``, a stream per endpoint and priority, consumer group ``gw``: an entry
  per QUEUED job; a claim reads it (it is then pending for the gateway that runs the job: its
  lease, renewed while it runs), an end acknowledges and deletes it;
- ``all``, ``s:<sig>``, ``st:<state>``, ``st:<state>:<sig>``: sorted sets of job ids by ``seq``,
  for listings and counts; ``o:<keyname>`` those of an API key; ``ended`` by the time they ended
  (JOB_TTL); ``webhooks`` by when their delivery is due;
- ``items:<id>``: a streaming job's items by index; ``idem:<key>``: the job of an Idempotency-Key;
- ``batch:<id>`` (``created total owner`` and the count per state) and ``batch:<id>:jobs`` (its job
  ids in line order);
- ``events``: the channel that tells the other gateways what changed (``[origin, kind, ...]`` in JSON).

A job's state changes only in ``move`` below, by :data:`.records.NEXT` (written into the script).
"""

from __future__ import annotations

from .records import NEXT

# What a record is read from, in this order (:meth:`.redisstore.RedisStore._record`).
FIELDS = ("sig", "state", "prio", "created", "attempts", "started", "finished", "webhook", "status", "answer", "seq",
          "wh_state", "wh_attempts", "entry", "keyname")

_NEXT = "{" + ", ".join(
    f"{state.value} = {{" + ", ".join(f"{target.value} = true" for target in sorted(targets, key=lambda s: s.value))
    + "}" for state, targets in NEXT.items()) + "}"

PRELUDE = """
local P = KEYS[1]
local NEXT = NEXT_TABLE
local function jkey(id) return P .. 'job:' .. id end
local function tell(...) redis.call('PUBLISH', P .. 'events', cjson.encode({...})) end

-- the one place a job's state changes: false when its stored state does not allow ``target``
-- (or ``fence``, its attempt, is not the stored one: a gateway whose lease was taken over)
local function move(id, target, fence)
  local key = jkey(id)
  local state, sig, seq, attempts, batch = unpack(redis.call('HMGET', key, 'state', 'sig', 'seq', 'attempts', 'batch'))
  if not state or not NEXT[state][target] then return false end
  if fence and tonumber(attempts) ~= tonumber(fence) then return false end
  redis.call('ZREM', P .. 'st:' .. state, id)
  redis.call('ZREM', P .. 'st:' .. state .. ':' .. sig, id)
  redis.call('ZADD', P .. 'st:' .. target, seq, id)
  redis.call('ZADD', P .. 'st:' .. target .. ':' .. sig, seq, id)
  redis.call('HSET', key, 'state', target)
  if batch then
    redis.call('HINCRBY', P .. 'batch:' .. batch, state, -1)
    redis.call('HINCRBY', P .. 'batch:' .. batch, target, 1)
  end
  return state
end

-- a new entry for a QUEUED job at the end of its endpoint's and priority's stream
local function enqueue(id)
  local sig, prio = unpack(redis.call('HMGET', jkey(id), 'sig', 'prio'))
  local q = P .. 'q:' .. sig .. ':' .. prio
  if redis.call('EXISTS', q) == 0 then redis.call('XGROUP', 'CREATE', q, 'gw', '0', 'MKSTREAM') end
  redis.call('HSET', jkey(id), 'entry', redis.call('XADD', q, '*', 'id', id))
  redis.call('HDEL', jkey(id), 'started', 'owner')
  return sig
end

-- its entry out of its stream (acknowledged, deleted)
local function dequeue(id)
  local sig, prio, entry = unpack(redis.call('HMGET', jkey(id), 'sig', 'prio', 'entry'))
  if entry then
    local q = P .. 'q:' .. sig .. ':' .. prio
    redis.call('XACK', q, 'gw', entry)
    redis.call('XDEL', q, entry)
    redis.call('HDEL', jkey(id), 'entry')
  end
end

-- it has ended at ``now``: its body dropped, kept until JOB_TTL, its webhook due
local function ended(id, now)
  dequeue(id)
  local key = jkey(id)
  redis.call('HDEL', key, 'body')
  redis.call('HSET', key, 'finished', now)
  redis.call('ZADD', P .. 'ended', now, id)
  if redis.call('HEXISTS', key, 'webhook') == 1 then
    redis.call('HSET', key, 'wh_state', 'PENDING')
    redis.call('ZADD', P .. 'webhooks', now, id)
  end
  tell(ARGV[1], 'ended', id)
end
""".replace("NEXT_TABLE", _NEXT)

# ARGV: origin, id, sig, state, prio, created, idempotency key ('' for none), tell ('1': tell the
# others it is queued), then field/value pairs of the job's other fields.
SUBMIT = PRELUDE + """
local id, sig, state, prio, created, idem = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
if idem ~= '' then
  local was = redis.call('GET', P .. 'idem:' .. idem)
  if was then return {0, was} end
end
local seq = redis.call('INCR', P .. 'seq')
local key = jkey(id)
redis.call('HSET', key, 'sig', sig, 'state', state, 'prio', prio, 'created', created, 'attempts', 0, 'seq', seq)
if #ARGV > 8 then redis.call('HSET', key, unpack(ARGV, 9)) end
for _, index in ipairs({'all', 's:' .. sig, 'st:' .. state, 'st:' .. state .. ':' .. sig}) do
  redis.call('ZADD', P .. index, seq, id)
end
redis.call('SADD', P .. 'sigs', sig)
local keyname = redis.call('HGET', key, 'keyname')
if keyname then redis.call('ZADD', P .. 'o:' .. keyname, seq, id) end
local batch = redis.call('HGET', key, 'batch')
if batch then
  redis.call('HINCRBY', P .. 'batch:' .. batch, state, 1)
  redis.call('RPUSH', P .. 'batch:' .. batch .. ':jobs', id)
end
if idem ~= '' then
  redis.call('SET', P .. 'idem:' .. idem, id)
  redis.call('HSET', key, 'idem', idem)
end
if state == 'QUEUED' then
  enqueue(id)
  if ARGV[8] == '1' then tell(ARGV[1], 'queued', sig, 1) end
else
  redis.call('HSET', key, 'finished', created)
  redis.call('ZADD', P .. 'ended', created, id)
end
return {1, seq}
"""

# ARGV: origin, consumer, sig, count, now. Returns per job claimed: id, entry, then FIELDS and body.
CLAIM = PRELUDE + """
local consumer, sig, want, now = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local out = {}
for prio = 9, 0, -1 do
  if want <= 0 then break end
  local q = P .. 'q:' .. sig .. ':' .. prio
  if redis.call('EXISTS', q) == 1 then
    local got = redis.call('XREADGROUP', 'GROUP', 'gw', consumer, 'COUNT', want, 'STREAMS', q, '>')
    if got then
      for _, e in ipairs(got[1][2]) do
        local entry, id = e[1], e[2][2]
        if id and move(id, 'RUNNING') then
          local key = jkey(id)
          redis.call('HINCRBY', key, 'attempts', 1)
          redis.call('HSET', key, 'started', now, 'owner', consumer)
          redis.call('DEL', P .. 'items:' .. id)
          local row = redis.call('HMGET', key, FIELDS_AND_BODY)
          table.insert(row, 1, id)
          out[#out + 1] = row
          want = want - 1
        else
          redis.call('XACK', q, 'gw', entry)
          redis.call('XDEL', q, entry)
        end
      end
    end
  end
end
return out
""".replace("FIELDS_AND_BODY", ", ".join(f"'{name}'" for name in (*FIELDS, "body")))

# ARGV: origin, id, target state, status, answer, now, fence (the attempt)
FINISH = PRELUDE + """
local id = ARGV[2]
if not move(id, ARGV[3], ARGV[7]) then return 0 end
redis.call('HSET', jkey(id), 'status', ARGV[4], 'answer', ARGV[5])
ended(id, ARGV[6])
return 1
"""

# ARGV: origin, id, counted ('1' or '0'), fence
REQUEUE = PRELUDE + """
local id = ARGV[2]
if not move(id, 'QUEUED', ARGV[4]) then return 0 end
if ARGV[3] == '0' then redis.call('HINCRBY', jkey(id), 'attempts', -1) end
dequeue(id)
tell(ARGV[1], 'queued', enqueue(id), 1)
return 1
"""

# ARGV: origin, id, now. Returns {} (no such job), {state} (it had ended) or {'CANCELLED', was}
CANCEL = PRELUDE + """
local id = ARGV[2]
local state, sig = unpack(redis.call('HMGET', jkey(id), 'state', 'sig'))
if not state then return {} end
local was = move(id, 'CANCELLED')
if not was then return {state} end
tell(ARGV[1], 'cancelled', id, sig, was)
ended(id, ARGV[3])
return {'CANCELLED', was}
"""

# ARGV: origin, consumer, lease (ms), max attempts, now, the error of a job lost too often (with
# <n> where the count goes), at most how many. The entries of gateways that stopped renewing
# their lease are taken (XAUTOCLAIM), and their jobs queued again (or FAILED past max attempts).
TAKEOVER = PRELUDE + """
local consumer, lease, max, now, lost, budget = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6], tonumber(ARGV[7])
local requeued, failed = 0, 0
for _, sig in ipairs(redis.call('SMEMBERS', P .. 'sigs')) do
  for prio = 0, 9 do
    local q = P .. 'q:' .. sig .. ':' .. prio
    local cursor = '0-0'
    while budget > 0 and redis.call('EXISTS', q) == 1 do
      local r = redis.call('XAUTOCLAIM', q, 'gw', consumer, lease, cursor, 'COUNT', 100)
      cursor = r[1]
      for _, e in ipairs(r[2]) do
        budget = budget - 1
        local entry, id = e[1], e[2][2]
        local key = id and jkey(id)
        local state, attempts, at = 'GONE', 0, nil
        if key then state, attempts, at = unpack(redis.call('HMGET', key, 'state', 'attempts', 'entry')) end
        if state == 'RUNNING' and at == entry then
          if tonumber(attempts) < max then
            move(id, 'QUEUED')
            dequeue(id)
            enqueue(id)
            requeued = requeued + 1
          else
            move(id, 'FAILED')
            redis.call('HSET', key, 'status', 502, 'answer', (string.gsub(lost, '<n>', attempts)))
            ended(id, now)
            failed = failed + 1
          end
        else
          redis.call('XACK', q, 'gw', entry)
          redis.call('XDEL', q, entry)
        end
      end
      if cursor == '0-0' then break end
    end
  end
end
if requeued > 0 then tell(ARGV[1], 'queued', '*', requeued) end
return {requeued, failed}
"""

# ARGV: origin, id, first index, items...
ADD_ITEMS = PRELUDE + """
local id, first = ARGV[2], tonumber(ARGV[3])
for n = 4, #ARGV do redis.call('HSET', P .. 'items:' .. id, first + n - 4, ARGV[n]) end
tell(ARGV[1], 'item', id, first + #ARGV - 4)
return 1
"""

# ARGV: before, at most how many. Returns how many jobs were forgotten.
PURGE = PRELUDE + """
local ids = redis.call('ZRANGEBYSCORE', P .. 'ended', '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local key = jkey(id)
  local sig, state, idem, batch, keyname = unpack(redis.call('HMGET', key, 'sig', 'state', 'idem', 'batch',
                                                               'keyname'))
  if sig then
    for _, index in ipairs({'all', 's:' .. sig, 'st:' .. state, 'st:' .. state .. ':' .. sig}) do
      redis.call('ZREM', P .. index, id)
    end
  end
  if keyname then redis.call('ZREM', P .. 'o:' .. keyname, id) end
  if idem then redis.call('DEL', P .. 'idem:' .. idem) end
  if batch then
    local b = P .. 'batch:' .. batch
    if redis.call('HINCRBY', b, 'purged', 1) >= tonumber(redis.call('HGET', b, 'total') or 0) then
      redis.call('DEL', b, b .. ':jobs')
    end
  end
  redis.call('DEL', key, P .. 'items:' .. id)
  redis.call('ZREM', P .. 'ended', id)
  redis.call('ZREM', P .. 'webhooks', id)
end
return #ids
"""

# ARGV: now, at most how many, seconds they are held for this gateway. Returns the job ids due.
DUE_WEBHOOKS = PRELUDE + """
local ids = redis.call('ZRANGEBYSCORE', P .. 'webhooks', '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do redis.call('ZADD', P .. 'webhooks', tonumber(ARGV[1]) + tonumber(ARGV[3]), id) end
return ids
"""

# ARGV: id, the attempt (JSON), when to try again ('' for never), the state then.
DELIVERED = PRELUDE + """
local key = jkey(ARGV[1])
if redis.call('EXISTS', key) == 0 then return 0 end
local log = redis.call('HGET', key, 'wh_attempts')
log = (not log or log == '[]') and ('[' .. ARGV[2] .. ']') or (string.sub(log, 1, -2) .. ',' .. ARGV[2] .. ']')
redis.call('HSET', key, 'wh_attempts', log)
if ARGV[3] ~= '' then
  redis.call('HSET', key, 'wh_state', 'PENDING')
  redis.call('ZADD', P .. 'webhooks', ARGV[3], ARGV[1])
else
  redis.call('HSET', key, 'wh_state', ARGV[4])
  redis.call('ZREM', P .. 'webhooks', ARGV[1])
end
return 1
"""

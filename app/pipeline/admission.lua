#!lua
-- Admit a batch of events into a stream in one round trip (app/pipeline/admission.py).
--
-- The shebang makes Redis treat the script as writing: under maxmemory it is refused before
-- it runs (an OOM error), never stopped half-way.
--
-- KEYS[1]   the stream
-- KEYS[...] four per admitted event, in order: window counter, nonce, idempotency key, marker
-- ARGV[1]   "1": append the admitted events to the stream; "0": only decide (the caller
--           spools them, behind events of another buffer still on disk)
-- ARGV[2]   the entry's field name
-- ARGV[3]   the most events per stream entry
-- then per event: "0", payload                       (appended unconditionally)
--             or: "1", payload, quota, window, nonce_ttl, fingerprint, ttl, marker value
--             (quota 0: no quota; nonce_ttl 0: no nonce; their keys are then placeholders)
-- Returns one code per event: "a" added, "d" duplicate, "c" conflict (the key holds another
-- fingerprint), "r" replayed (the nonce was used), "l" over quota; then, after the codes, the
-- window counts of the admitted events (0 for unconditional ones and when quota is 0).
local write, field, per_entry = ARGV[1] == "1", ARGV[2], tonumber(ARGV[3])
local codes, counts, added = {}, {}, {}
local a, k = 4, 2
while a <= #ARGV do
  local conditional, payload = ARGV[a] == "1", ARGV[a + 1]
  a = a + 2
  local code, used = "a", 0
  if conditional then
    local window_key, nonce_key, key, marker = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
    local quota, window, nonce_ttl = tonumber(ARGV[a]), ARGV[a + 1], tonumber(ARGV[a + 2])
    local fingerprint, ttl, marker_value = ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]
    k, a = k + 4, a + 6
    if quota > 0 then
      used = redis.call("INCR", window_key)
      if used == 1 then
        redis.call("EXPIRE", window_key, window)
      end
    end
    if quota > 0 and used > quota then
      code = "l"
    elseif nonce_ttl > 0 and not redis.call("SET", nonce_key, "1", "NX", "EX", nonce_ttl) then
      code = "r"
    else
      local seen = redis.call("GET", key)
      if seen then
        code = (seen == fingerprint) and "d" or "c"
      else
        redis.call("SET", key, fingerprint, "EX", ttl)
        redis.call("SET", marker, marker_value, "EX", ttl)
      end
    end
  end
  if code == "a" then
    added[#added + 1] = payload
  end
  codes[#codes + 1] = code
  counts[#counts + 1] = used
end
if write then
  for first = 1, #added, per_entry do
    local last = math.min(first + per_entry - 1, #added)
    redis.call("XADD", KEYS[1], "*", field, "[" .. table.concat(added, ",", first, last) .. "]")
  end
end
for i = 1, #counts do
  codes[#codes + 1] = counts[i]
end
return codes

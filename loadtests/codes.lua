-- wrk script: GET /r/{code} over many link codes (one per line in CODES_FILE), in random order,
-- so the test is not one hot key. Optional fixed rate per connection: RATE_DELAY_MS.
local codes = {}
local delay_ms = tonumber(os.getenv("RATE_DELAY_MS") or "0")

function setup(thread)
  thread:set("id", tostring(thread))
end

function init(args)
  for line in io.lines(os.getenv("CODES_FILE")) do
    codes[#codes + 1] = "/r/" .. line
  end
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
  wrk.headers["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"
end

function request()
  return wrk.format("GET", codes[math.random(#codes)])
end

-- Each connection waits about delay_ms between requests. The wait is jittered uniformly in
-- [0.5, 1.5) x delay_ms (same mean): with a constant delay the 64 connections stay in phase and
-- arrive in bursts of 64, which no real traffic does.
if delay_ms > 0 then
  function delay()
    return delay_ms * (0.5 + math.random())
  end
end

dofile(os.getenv("LOADTESTS_DIR") .. "/report.lua")

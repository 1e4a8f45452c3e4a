-- wrk script: GET /r/{code} over many link codes (one per line in CODES_FILE), in random order,
-- so the test is not one hot key; with IN_ORDER set, each code in turn (warming a cache).
-- Pacing (RATE_DELAY_MS) and the report: common.lua.
local codes = {}
local in_order = os.getenv("IN_ORDER")
local next_code = 0

function init(args)
  for line in io.lines(os.getenv("CODES_FILE")) do
    codes[#codes + 1] = "/r/" .. line
  end
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
  wrk.headers["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"
end

function request()
  if in_order then
    next_code = next_code % #codes + 1
    return wrk.format("GET", codes[next_code])
  end
  return wrk.format("GET", codes[math.random(#codes)])
end

dofile(os.getenv("LOADTESTS_DIR") .. "/common.lua")

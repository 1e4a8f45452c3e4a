-- Shared by the wrk scripts (loaded with dofile): pacing and the JSON report.

-- With RATE_DELAY_MS set, each connection waits about that long between requests. The wait is
-- jittered uniformly in [0.5, 1.5) x delay (same mean): with a constant delay the connections
-- stay in phase and arrive in bursts, which no real traffic does.
local delay_ms = tonumber(os.getenv("RATE_DELAY_MS") or "0")
if delay_ms > 0 then
  function delay()
    return delay_ms * (0.5 + math.random())
  end
end

-- Writes the run's figures as JSON to WRK_JSON.
function done(summary, latency, requests)
  local out = io.open(os.getenv("WRK_JSON") or "/dev/null", "w")
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "errors": %d, "non_3xx": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "p999_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), latency.max))
  out:close()
end

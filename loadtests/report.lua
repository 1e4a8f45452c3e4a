-- Shared by the wrk scripts: writes the run's figures as JSON to WRK_JSON.
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

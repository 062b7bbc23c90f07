-- wrk script for `make bench`: every request carries the next token of a pool file
-- (one JWT a line) as a bearer token. Args: POOL_FILE DELAY_MS. bench.py appends a
-- `delay()` returning DELAY_MS for the paced (fixed-rate) latency runs; wrk decides
-- from the main script whether `delay` exists, so it cannot be defined conditionally.
local tokens, n, i, delay_ms = {}, 0, 0, 0
local path = "/api/4.0/dashboards/1"

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then
      n = n + 1
      tokens[n] = "Bearer " .. line
    end
  end
  delay_ms = tonumber(args[2]) or 0
end

function request()
  i = i + 1
  local token = tokens[((i - 1) % n) + 1]
  return wrk.format("GET", path, { ["Authorization"] = token })
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "seconds": %f, "non2xx": %d, "errors": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration / 1e6, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end

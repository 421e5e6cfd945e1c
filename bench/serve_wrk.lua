-- bench/serve.py --client wrk: POST /search with a distinct JSON body per request.
-- Argument: the file of bodies (one per line); the summary (JSON) goes to $WRK_SUMMARY.
-- $WRK_BACKOFF_MS (overload): a connection refused with 429 waits that long before its next
-- request, as a client honouring Retry-After would (wrk otherwise re-sends at once: a storm).
local bodies, n = {}, 0
local backoff = tonumber(os.getenv("WRK_BACKOFF_MS") or "0")
local refused = false

function init(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
end

function request()
  n = n + 1
  local body = bodies[((n - 1) % #bodies) + 1]
  return wrk.format("POST", "/search", { ["Content-Type"] = "application/json" }, body)
end

function response(status, headers, body)
  refused = status == 429
end

function delay()
  -- called before the next request of the connection that just got its answer
  if refused and backoff > 0 then
    refused = false
    return backoff
  end
  return 0
end

function done(summary, latency, requests)
  local e = summary.errors
  local f = assert(io.open(os.getenv("WRK_SUMMARY"), "w"))
  f:write(string.format(
    '{"requests": %d, "seconds": %.3f, "non_2xx": %d, "socket_errors": %d, ' ..
    '"p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f}\n',
    summary.requests, summary.duration / 1e6, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1e3, latency:percentile(90) / 1e3, latency:percentile(99) / 1e3))
  f:close()
end

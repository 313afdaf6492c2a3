-- wrk script for benchmarks/serve_load.py: POST prepared multipart bodies in turn, print JSON.
-- Arguments (after --): the multipart boundary, then one file per request body.
local requests = {}
local n = 0

function init(args)
  local boundary = args[1]
  wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary
  for i = 2, #args do
    local f = assert(io.open(args[i], "rb"))
    local body = f:read("*a")
    f:close()
    requests[#requests + 1] = wrk.format("POST", "/v1/predict", nil, body)
  end
end

function request()
  n = n + 1
  return requests[(n % #requests) + 1]
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non2xx": %d, "connect": %d, "read": %d, "write": %d, "timeout": %d, '
      .. '"p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max, latency.mean))
end

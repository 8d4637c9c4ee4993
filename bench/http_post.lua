-- wrk script for bench/http_bench.py: POSTs /recommend bodies from a file (one JSON body per
-- line) in rotation, each wrk thread starting at its own offset, and prints one JSON line
-- with the counts and latencies the driver reads.
--   wrk ... -s bench/http_post.lua http://127.0.0.1:PORT/recommend -- BODIES_FILE
local bodies = {}
local threads = {}
local index = 0

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(args[1]) do
    bodies[#bodies + 1] = line
  end
  index = (id or 0) * 997 % #bodies
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  index = index % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[index])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "status_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end

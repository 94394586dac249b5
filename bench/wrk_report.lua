-- wrk script: POST the body read from the file BENCH_BODY_FILE (a file, not an environment
-- variable: Linux limits one environment string to 128 KB), count the answers that are not 2xx by
-- status (with the first such body), print one machine-readable line at the end.
local path = assert(os.getenv("BENCH_BODY_FILE"), "BENCH_BODY_FILE is not set")
local file = assert(io.open(path, "rb"))
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = file:read("*a")
file:close()
-- BENCH_HEADERS: more request headers, one "Name: value" a line (e.g. a binary body's Content-Type)
for name, value in string.gmatch(os.getenv("BENCH_HEADERS") or "", "([^:\n]+):%s*([^\n]*)") do
  wrk.headers[name] = value
end

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

failed = {}  -- per thread: status -> count, for answers that are not 2xx
sample = ""
function response(status, headers, body)
  if status < 200 or status > 299 then
    failed[status] = (failed[status] or 0) + 1
    if sample == "" then sample = string.sub(body or "", 1, 200) end
  end
end

done = function(summary, latency, requests)
  local statuses, seen, first = {}, {}, ""
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("failed")) do seen[status] = (seen[status] or 0) + count end
    if first == "" then first = thread:get("sample") end
  end
  for status, count in pairs(seen) do table.insert(statuses, string.format('"%d": %d', status, count)) end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, "p50_us": %d, "p99_us": %d, '
      .. '"statuses": {%s}, "sample": "%s"}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), table.concat(statuses, ", "),
    (first:gsub('[%c"\\]', " "))))
end

-- Kiosks for wrk: GET /classify with a JSON body, 10-20 ms think time, every connection at once.
--   wrk -c250 -t2 -d10s -s bench/burst/kiosk.lua http://127.0.0.1:8000 -- bodies.jsonl
-- bodies.jsonl holds one request body per line; requests take them in turn, so the first 250
-- requests of a burst spread evenly over the restaurants in the file. A second argument
-- `nothink` drops the think time (a flooding client: the next request as soon as an answer
-- arrives). Answers 429 are counted apart from the other failures.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   local headers = { ["Content-Type"] = "application/json" }
   requests = {}
   for line in io.lines(args[1]) do
      table.insert(requests, wrk.format("GET", "/classify", headers, line))
   end
   turn = 0
   not_ok = 0
   too_many = 0
   bad_seen = ""  -- the first few other statuses, so a report says what the failures were
   think = args[2] ~= "nothink"
end

function request()
   turn = turn % #requests + 1
   return requests[turn]
end

function delay()
   if think then
      return math.random(10, 20)
   end
   return 0
end

function response(status, headers, body)
   if status == 429 then
      too_many = too_many + 1
   elseif status ~= 200 then
      not_ok = not_ok + 1
      if not_ok <= 5 then
         bad_seen = bad_seen .. " " .. status
      end
   end
end

function done(summary, latency, requests)
   local failed, refused, seen = 0, 0, ""
   for _, thread in ipairs(threads) do
      failed = failed + thread:get("not_ok")
      refused = refused + thread:get("too_many")
      seen = seen .. thread:get("bad_seen")
   end
   local errors = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests": %d, "duration_us": %d, "not_200": %d, "status_429": %d, ' ..
      '"connect": %d, ' ..
      '"read": %d, "write": %d, "timeout": %d, "mean_ms": %.1f, "max_ms": %.1f, ' ..
      '"p50_ms": %.1f, "p75_ms": %.1f, "p90_ms": %.1f, "p95_ms": %.1f, "p99_ms": %.1f, ' ..
      '"p99.9_ms": %.1f, "other_statuses": "%s"}\n',
      summary.requests, summary.duration, failed + refused, refused, errors.connect, errors.read, errors.write,
      errors.timeout, latency.mean / 1000, latency.max / 1000,
      latency:percentile(50) / 1000, latency:percentile(75) / 1000,
      latency:percentile(90) / 1000, latency:percentile(95) / 1000,
      latency:percentile(99) / 1000, latency:percentile(99.9) / 1000, seen))
end

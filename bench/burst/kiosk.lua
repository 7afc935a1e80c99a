-- Kiosks for wrk: GET /classify with a JSON body, 10-20 ms think time, every connection at once.
--   wrk -c250 -t2 -d10s -s bench/burst/kiosk.lua http://127.0.0.1:8000 -- bodies.jsonl
-- bodies.jsonl holds one request body per line; requests take them in turn, so the first 250
-- requests of a burst spread evenly over the restaurants in the file. A second argument
-- `nothink` drops the think time (a flooding client: the next request as soon as an answer
-- arrives). Answers 429 are counted apart from the other failures. What the wrk scripts share
-- (the tallies, the summary line) is in bench/wrkload.lua.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = here .. "../?.lua;" .. package.path
local shared = require("wrkload")

setup = shared.setup

function init(args)
   local headers = { ["Content-Type"] = "application/json" }
   local requests = {}
   for _, line in ipairs(shared.read_lines(args[1])) do
      table.insert(requests, wrk.format("GET", "/classify", headers, line))
   end
   next_request = shared.in_turn(requests)
   think = args[2] ~= "nothink"
   shared.start_tally()
end

function request()
   return next_request()
end

function delay()
   if think then
      return math.random(10, 20)
   end
   return 0
end

function response(status, headers, body)
   shared.tally(status, body)
end

-- not_200 counts the 429s too; other_statuses: the first few failing statuses besides 429.
done = shared.done({
   "requests", "duration_us", "not_200", "status_429", "connect", "read", "write", "timeout",
   "mean_ms", "max_ms", "p50_ms", "p75_ms", "p90_ms", "p95_ms", "p99_ms", "p99.9_ms",
   "other_statuses",
}, 1)

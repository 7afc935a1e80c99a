-- One wrk script for every workload of the peer benchmark (bench/peers/run.py writes its args):
--   wrk -c250 -t2 -d60s -s bench/peers/load.lua URL \
--       -- <requests file> <expected text> <think low ms> <think high ms>
-- The requests file holds "METHOD PATH CONTENT-TYPE BODY-FILE" lines; requests take them in turn.
-- Before each request a connection waits a random whole number of ms from <think low ms> to
-- <think high ms>; with <think high ms> 0 it does not wait.
-- An answer counts as good only if its status is 200 and its body, spaces removed, contains every
-- expected text, spaces removed too (texts are separated by "||"; every correct answer of a
-- workload is the same; see workloads.py). A body holding "@N@" (the bird bodies of
-- workloads.bird_body) gets a number there that no other request of the run has. What the wrk
-- scripts share (the tallies, the summary line) is in bench/wrkload.lua.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = here .. "../?.lua;" .. package.path
local shared = require("wrkload")

setup = shared.setup  -- it also sets each thread's `thread_id`, which "@N@" numbers begin with

function init(args)
   local requests = {}
   templates = {}
   for _, line in ipairs(shared.read_lines(args[1])) do
      local method, path, kind, body_path = line:match("^(%S+) (%S+) (%S+) (%S+)$")
      local headers = { ["Content-Type"] = kind }
      local body = shared.read_file(body_path)
      if string.find(body, "@N@", 1, true) then
         table.insert(templates, { method, path, headers, body })
      else
         table.insert(requests, wrk.format(method, path, headers, body))
      end
   end
   local expected = {}
   for text in string.gmatch(args[2] .. "||", "(.-)||") do
      if text ~= "" then
         table.insert(expected, text)
      end
   end
   good = shared.holds_all(expected, true)
   counter = 0
   think_low = tonumber(args[3])
   think_high = tonumber(args[4])
   local first = math.random(math.max(#requests, #templates))
   next_request = shared.in_turn(requests, first)
   next_template = shared.in_turn(templates, first)
   shared.start_tally()
end

function request()
   if #templates > 0 then
      counter = counter + 1
      local method, path, headers, body = (table.unpack or unpack)(next_template())
      local unique = string.format("%d-%d", thread_id, counter)
      return wrk.format(method, path, headers, (body:gsub("@N@", unique)))
   end
   return next_request()
end

function delay()
   if think_high > 0 then
      return math.random(think_low, think_high)
   end
   return 0
end

function response(status, headers, body)
   shared.tally(status, body, good)
end

done = shared.done({
   "requests", "duration_us", "not_200", "wrong", "connect", "read", "write", "timeout",
   "p50_ms", "p95_ms", "p99_ms", "max_ms",
}, 1)

-- One wrk script for every workload of the peer benchmark (bench/peers/run.py writes its args):
--   wrk -c250 -t2 -d60s -s bench/peers/load.lua URL -- <requests file> <expected text> <think ms>
-- The requests file holds "METHOD PATH CONTENT-TYPE BODY-FILE" lines; requests take them in turn.
-- An answer counts as good only if its status is 200 and its body, spaces removed, contains every
-- expected text, spaces removed too (texts are separated by "||"; every correct answer of a
-- workload is the same; see workloads.py). A body holding "@N@" gets a number there that no
-- other request of the run has.

local threads = {}

function setup(thread)
   thread:set("thread_id", #threads)
   table.insert(threads, thread)
end

local function read_file(path)
   local file = assert(io.open(path, "rb"))
   local data = file:read("*a")
   file:close()
   return data
end

function init(args)
   requests = {}
   templates = {}
   for line in io.lines(args[1]) do
      local method, path, kind, body_path = line:match("^(%S+) (%S+) (%S+) (%S+)$")
      local headers = { ["Content-Type"] = kind }
      local body = read_file(body_path)
      if string.find(body, "@N@", 1, true) then
         table.insert(templates, { method, path, headers, body })
      else
         table.insert(requests, wrk.format(method, path, headers, body))
      end
   end
   expected = {}
   for text in string.gmatch(args[2] .. "||", "(.-)||") do
      if text ~= "" then
         table.insert(expected, (text:gsub("%s", "")))
      end
   end
   counter = 0
   think_low = tonumber(args[3])
   think_high = tonumber(args[4])
   turn = math.random(math.max(#requests, #templates))
   not_200 = 0
   wrong = 0
end

function request()
   if #templates > 0 then
      turn = turn % #templates + 1
      counter = counter + 1
      local method, path, headers, body = (table.unpack or unpack)(templates[turn])
      local unique = string.format("%d-%d", thread_id, counter)
      return wrk.format(method, path, headers, (body:gsub("@N@", unique)))
   end
   turn = turn % #requests + 1
   return requests[turn]
end

function delay()
   if think_high > 0 then
      return math.random(think_low, think_high)
   end
   return 0
end

function response(status, headers, body)
   if status ~= 200 then
      not_200 = not_200 + 1
   else
      local text = body:gsub("%s", "")
      for _, part in ipairs(expected) do
         if not string.find(text, part, 1, true) then
            wrong = wrong + 1
            return
         end
      end
   end
end

function done(summary, latency, requests)
   local bad_status, bad_body = 0, 0
   for _, thread in ipairs(threads) do
      bad_status = bad_status + thread:get("not_200")
      bad_body = bad_body + thread:get("wrong")
   end
   local errors = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests": %d, "duration_us": %d, "not_200": %d, "wrong": %d, ' ..
      '"connect": %d, "read": %d, "write": %d, "timeout": %d, "p50_ms": %.1f, ' ..
      '"p95_ms": %.1f, "p99_ms": %.1f, "max_ms": %.1f}\n',
      summary.requests, summary.duration, bad_status, bad_body, errors.connect, errors.read,
      errors.write, errors.timeout, latency:percentile(50) / 1000, latency:percentile(95) / 1000,
      latency:percentile(99) / 1000, latency.max / 1000))
end

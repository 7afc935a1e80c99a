-- The one load generator of bench/oip/run.py, for every server:
--   wrk -c N -t T -d S -s bench/oip/load.lua URL -- <body file> <header length or ""> [<expected>]
-- Posts the same inference request again and again (binary tensors when a header length is
-- given, else JSON). An answer counts as good only with status 200 and the expected text in it
-- (the output's name, '"logits"' unless given).

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   local file = assert(io.open(args[1], "rb"))
   local body = file:read("*a")
   file:close()
   local headers = {}
   if args[2] ~= nil and args[2] ~= "" then
      headers["Content-Type"] = "application/octet-stream"
      headers["Inference-Header-Content-Length"] = args[2]
   else
      headers["Content-Type"] = "application/json"
   end
   prepared = wrk.format("POST", nil, headers, body)
   expected = args[3] or '"logits"'
   not_200 = 0
   wrong = 0
end

function request()
   return prepared
end

function response(status, headers, body)
   if status ~= 200 then
      not_200 = not_200 + 1
   elseif not string.find(body, expected, 1, true) then
      wrong = wrong + 1
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
      '"socket_errors": %d, "timeouts": %d, "p50_ms": %.2f, "p95_ms": %.2f, "p99_ms": %.2f}\n',
      summary.requests, summary.duration, bad_status, bad_body,
      errors.connect + errors.read + errors.write, errors.timeout,
      latency:percentile(50) / 1000, latency:percentile(95) / 1000,
      latency:percentile(99) / 1000))
end

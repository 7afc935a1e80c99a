-- The one load generator of bench/oip/run.py, for every server:
--   wrk -c N -t T -d S -s bench/oip/load.lua URL -- <body file> <header length or ""> [<expected>]
-- Posts the same inference request again and again (binary tensors when a header length is
-- given, else JSON). An answer counts as good only with status 200 and the expected text in it
-- (the output's name, '"logits"' unless given). What the wrk scripts share (the tallies, the
-- summary line) is in bench/wrkload.lua.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = here .. "../?.lua;" .. package.path
local shared = require("wrkload")

setup = shared.setup

function init(args)
   local body = shared.read_file(args[1])
   local headers = {}
   if args[2] ~= nil and args[2] ~= "" then
      headers["Content-Type"] = "application/octet-stream"
      headers["Inference-Header-Content-Length"] = args[2]
   else
      headers["Content-Type"] = "application/json"
   end
   prepared = wrk.format("POST", nil, headers, body)
   good = shared.holds_all({ args[3] or '"logits"' })
   shared.start_tally()
end

function request()
   return prepared
end

function response(status, headers, body)
   shared.tally(status, body, good)
end

done = shared.done({
   "requests", "duration_us", "not_200", "wrong", "socket_errors", "timeouts",
   "p50_ms", "p95_ms", "p99_ms",
}, 2)

-- What the wrk scripts of bench/ share (burst/kiosk.lua, oip/load.lua, peers/load.lua): reading
-- request files, taking requests in turn, tallying the answers, and the one summary line
-- (`WRK_JSON {...}`) each benchmark's Python parses. A script loads it from its folder's parent:
--
--   local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
--   package.path = here .. "../?.lua;" .. package.path
--   local shared = require("wrkload")
--
-- wrk runs a script once in a Lua state of its own for setup() and done(), and once per thread
-- for init(), request(), delay() and response(). done() reads a thread's figures only through
-- thread:get, which reads globals: so the tallies are globals of each thread's state. Each
-- script still defines the callbacks itself, at load time, because wrk looks at which of them
-- a script has (delay, response) before any of them runs.

local M = {}

local threads = {}

-- wrk's setup(): keep every thread for done(), and give each a number of its own (`thread_id`).
function M.setup(thread)
   thread:set("thread_id", #threads)
   table.insert(threads, thread)
end

-- A whole file's bytes.
function M.read_file(path)
   local file = assert(io.open(path, "rb"))
   local data = file:read("*a")
   file:close()
   return data
end

-- A file's lines, in order.
function M.read_lines(path)
   local lines = {}
   for line in io.lines(path) do
      table.insert(lines, line)
   end
   return lines
end

-- A function returning `items` in turn, starting after the `first`-th (none given: the first).
function M.in_turn(items, first)
   local turn = first or 0
   return function()
      turn = turn % #items + 1
      return items[turn]
   end
end

-- A check of an answer's body: it holds every text of `texts` (plain text, not patterns). With
-- `ignore_spaces`, white space is removed from the texts and the body before they are compared.
function M.holds_all(texts, ignore_spaces)
   local wanted = {}
   for _, text in ipairs(texts) do
      table.insert(wanted, ignore_spaces and (text:gsub("%s", "")) or text)
   end
   return function(body)
      local text = ignore_spaces and body:gsub("%s", "") or body
      for _, part in ipairs(wanted) do
         if not string.find(text, part, 1, true) then
            return false
         end
      end
      return true
   end
end

-- Called by a thread's init(): its tallies start at nothing.
function M.start_tally()
   not_200 = 0  -- every answer that was not 200, 429s included
   status_429 = 0
   wrong = 0  -- 200s whose body failed the script's check
   other_statuses = ""  -- the first few statuses besides 200 and 429, to say what failed
   others = 0
end

-- Called by a thread's response(): count one answer; `good(body)`, when given, judges a 200's.
function M.tally(status, body, good)
   if status == 200 then
      if good ~= nil and not good(body) then
         wrong = wrong + 1
      end
      return
   end
   not_200 = not_200 + 1
   if status == 429 then
      status_429 = status_429 + 1
   else
      others = others + 1
      if others <= 5 then
         other_statuses = other_statuses .. " " .. status
      end
   end
end

-- Each field a summary may hold: its format ("f": milliseconds, with the script's decimals)
-- and its value from wrk's summary, its latency statistics and the threads' tallies.
local FIELDS = {
   requests = { "d", function(s) return s.summary.requests end },
   duration_us = { "d", function(s) return s.summary.duration end },
   not_200 = { "d", function(s) return s.not_200 end },
   status_429 = { "d", function(s) return s.status_429 end },
   wrong = { "d", function(s) return s.wrong end },
   connect = { "d", function(s) return s.summary.errors.connect end },
   read = { "d", function(s) return s.summary.errors.read end },
   write = { "d", function(s) return s.summary.errors.write end },
   timeout = { "d", function(s) return s.summary.errors.timeout end },
   socket_errors = { "d", function(s)
      local errors = s.summary.errors
      return errors.connect + errors.read + errors.write
   end },
   timeouts = { "d", function(s) return s.summary.errors.timeout end },
   mean_ms = { "f", function(s) return s.latency.mean / 1000 end },
   max_ms = { "f", function(s) return s.latency.max / 1000 end },
   other_statuses = { "s", function(s) return s.other_statuses end },
}

-- A wrk done() printing `WRK_JSON {...}` with `fields` in that order, milliseconds with
-- `decimals` decimals. Besides FIELDS' names, `pN_ms` is the N-th latency percentile.
function M.done(fields, decimals)
   local float = "%." .. decimals .. "f"
   return function(summary, latency, requests)
      local seen = {
         summary = summary, latency = latency,
         not_200 = 0, status_429 = 0, wrong = 0, other_statuses = "",
      }
      for _, thread in ipairs(threads) do
         seen.not_200 = seen.not_200 + thread:get("not_200")
         seen.status_429 = seen.status_429 + thread:get("status_429")
         seen.wrong = seen.wrong + thread:get("wrong")
         seen.other_statuses = seen.other_statuses .. thread:get("other_statuses")
      end
      local parts = {}
      for _, name in ipairs(fields) do
         local percentile = name:match("^p([%d.]+)_ms$")
         local text
         if percentile then
            text = string.format(float, latency:percentile(tonumber(percentile)) / 1000)
         else
            local kind, value = FIELDS[name][1], FIELDS[name][2](seen)
            if kind == "d" then
               text = string.format("%d", value)
            elseif kind == "f" then
               text = string.format(float, value)
            else
               text = '"' .. value .. '"'
            end
         end
         table.insert(parts, '"' .. name .. '": ' .. text)
      end
      io.write("WRK_JSON {" .. table.concat(parts, ", ") .. "}\n")
   end
end

return M

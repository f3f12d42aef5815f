-- wrk script for the switchyard demo: every request carries a rotating x-user-id (the demo's
-- sticky key), and at the end it prints the status-code distribution and the share of "blue"
-- and "green" answers (the demo backends answer "blue GET /path" or "green GET /path").
--
--   wrk -t2 -c64 -d10s -s load-tests/wrk-split.lua http://127.0.0.1:18080/
--
-- WRK_USERS (default 10000) is the number of distinct user ids rotated through. With sticky
-- routing, the blue/green share is the share of those users each color owns, so it matches the
-- weights only within a few percent for small WRK_USERS.

local users = tonumber(os.getenv("WRK_USERS") or "") or 10000
local threads = {}
local next_id = 1

function setup(thread)
   thread:set("thread_id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

-- Per-thread state (each wrk thread has its own Lua state); read back in done().
statuses = {}
colors = {}
n = 0

function init(args)
   -- Spread the threads over the key space so they do not send the same ids in lockstep.
   n = (thread_id or 1) * 7919
end

function request()
   n = n + 1
   return wrk.format(nil, nil, { ["x-user-id"] = "user-" .. (n % users) })
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   local word = body and body:match("^(%S+)") or nil
   if word ~= "blue" and word ~= "green" then
      word = "other"
   end
   colors[word] = (colors[word] or 0) + 1
end

local function add_into(total, part)
   for k, v in pairs(part) do
      total[k] = (total[k] or 0) + v
   end
end

local function sorted_keys(t)
   local keys = {}
   for k in pairs(t) do
      table.insert(keys, k)
   end
   table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
   return keys
end

function done(summary, latency, requests)
   local st, col = {}, {}
   for _, t in ipairs(threads) do
      add_into(st, t:get("statuses"))
      add_into(col, t:get("colors"))
   end
   local total, non2xx = 0, 0
   io.write("\n-- switchyard split --\n")
   io.write("status codes:\n")
   for _, code in ipairs(sorted_keys(st)) do
      io.write(string.format("  %s: %d\n", tostring(code), st[code]))
      total = total + st[code]
      if code < 200 or code > 299 then
         non2xx = non2xx + st[code]
      end
   end
   io.write(string.format("non-2xx responses: %d of %d\n", non2xx, total))
   io.write("colors:\n")
   for _, c in ipairs({ "blue", "green", "other" }) do
      local v = col[c] or 0
      local share = total > 0 and 100 * v / total or 0
      io.write(string.format("  %-5s %9d  %6.2f%%\n", c, v, share))
   end
   io.write(string.format("latency p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
      latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end

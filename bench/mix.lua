-- The caller mix for wrk (bench/README.md, "Workloads").
--
--   wrk -t1 -c64 -d8s -s bench/mix.lua URL -- CALLERS WRITE_PERCENT PATH_TEMPLATE
--
-- CALLERS: one "<token> <customer> <account>" line per caller (bench/callers.py).
-- WRITE_PERCENT: share of POST writes (a JSON card body), e.g. 20; 0 for reads only.
-- PATH_TEMPLATE: "{customer}" is replaced, e.g. /v1/customers/{customer}/payment-methods.
--
-- Every request is prepared in init(): a cycle of 10 requests per caller in which caller k
-- comes once every N requests (round-robin over the callers) and each request is a write
-- with probability WRITE_PERCENT (fixed seed), so per request wrk only hands out the next
-- prepared string. Each thread starts at its own offset in the cycle. done() prints the
-- latency percentiles (microseconds, wrk's histogram from send to answer) on one line
-- starting with "BENCH " for bench/loadgen.py, p99.9 included.

local prepared = {}
local index = 0
local threads = {}

function setup(thread)
   thread:set("id", #threads)
   table.insert(threads, thread)
end

function init(args)
   local file = args[1]
   local percent = tonumber(args[2] or "20")
   local template = args[3] or "/v1/customers/{customer}/payment-methods"
   local callers = {}
   for line in io.lines(file) do
      local token, customer = line:match("^(%S+)%s+(%S+)")
      if token then
         callers[#callers + 1] = { token, customer }
      end
   end
   local body = '{"card_number":"4242424242424242","exp_month":12,"exp_year":2030}'
   math.randomseed(20261129)
   local n = #callers
   for j = 0, 10 * n - 1 do
      local caller = callers[(j % n) + 1]
      local path = template:gsub("{customer}", caller[2])
      local headers = { ["Authorization"] = "Bearer " .. caller[1] }
      if math.random() * 100 < percent then
         headers["Content-Type"] = "application/json"
         prepared[#prepared + 1] = wrk.format("POST", path, headers, body)
      else
         prepared[#prepared + 1] = wrk.format("GET", path, headers, nil)
      end
   end
   index = (id or 0) * 7919 % #prepared
end

function request()
   index = index + 1
   if index > #prepared then
      index = 1
   end
   return prepared[index]
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH {"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,'
         .. '"requests":%d,"status_errors":%d,"socket_errors":%d}\n',
      latency:percentile(50), latency:percentile(75), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9), latency.max,
      summary.requests, e.status, e.connect + e.read + e.write + e.timeout
   ))
end

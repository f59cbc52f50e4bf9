-- wrk script for bench/bench_receiver.py: pre-signed, never-duplicate Clerk deliveries.
--
--   wrk ... -s bench/signed_deliveries.lua URL -- DELIVERIES_FILE BODY_FILE [DELAY_MS]
--
-- DELIVERIES_FILE holds one delivery per line, "svix-id svix-timestamp svix-signature", signed
-- over the one body in BODY_FILE (the dedup key is svix-id, so one body is enough). Each wrk
-- thread sends the lines whose number modulo the thread count is its own, each exactly once:
-- nothing is ever sent twice. A thread that runs out sends GET /healthz instead and counts it
-- ("exhausted"); the bench treats any such count as a failed run (more deliveries needed).
-- DELAY_MS (optional) makes each connection wait that long after an answer before its next
-- request: the way to load the server below its peak (wrk has no rate limit).
-- done() prints one line the bench parses: "RESULT status=count ... exhausted=N".

local threads = {}
local counter = 0

function setup(thread)
   thread:set("thread_index", counter)
   table.insert(threads, thread)
   counter = counter + 1
end

function init(args)
   local deliveries_file, body_file = args[1], args[2]
   delay_ms = tonumber(args[3] or "0")
   local thread_count = tonumber(args[4] or "1")
   local handle = assert(io.open(body_file, "rb"))
   local body = handle:read("*a")
   handle:close()
   requests, next_request, statuses, exhausted = {}, 1, {}, 0
   local line_number = 0
   for line in io.lines(deliveries_file) do
      if line_number % thread_count == thread_index then
         local id, timestamp, signature = line:match("^(%S+) (%S+) (.+)$")
         requests[#requests + 1] = wrk.format("POST", "/webhooks/clerk", {
            ["Content-Type"] = "application/json",
            ["svix-id"] = id,
            ["svix-timestamp"] = timestamp,
            ["svix-signature"] = signature,
         }, body)
      end
      line_number = line_number + 1
   end
   fallback = wrk.format("GET", "/healthz")
end

function delay()
   return delay_ms
end

function request()
   local chosen = requests[next_request]
   if chosen == nil then
      exhausted = exhausted + 1
      return fallback
   end
   requests[next_request] = nil  -- sent once; frees the memory as the run goes
   next_request = next_request + 1
   return chosen
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
   local totals, exhausted_total = {}, 0
   for _, thread in ipairs(threads) do
      for status, count in pairs(thread:get("statuses")) do
         totals[status] = (totals[status] or 0) + count
      end
      exhausted_total = exhausted_total + thread:get("exhausted")
   end
   local parts = {}
   for status, count in pairs(totals) do
      parts[#parts + 1] = string.format("%d=%d", status, count)
   end
   io.write(string.format("RESULT %s exhausted=%d p50_us=%d p99_us=%d\n", table.concat(parts, " "),
      exhausted_total, latency:percentile(50), latency:percentile(99)))
end

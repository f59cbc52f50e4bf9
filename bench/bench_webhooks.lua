-- wrk script for bench/bench_webhooks.py: pre-signed, never-duplicate Clerk user.created deliveries.
--
--   wrk ... -s bench/bench_webhooks.lua URL -- DELIVERIES_FILE THREAD_COUNT
--
-- DELIVERIES_FILE holds one delivery per line, "svix-id svix-timestamp svix-signature body" (the
-- body is one line of JSON, a user of its own per delivery). Each wrk thread sends the lines whose
-- number modulo the thread count is its own, each exactly once, and stops once all of them were
-- answered; meanwhile a connection that finds none left sends GET /healthz (told apart by its
-- body, counted apart, at most MAX_FALLBACKS per thread). The bench watches the database and
-- sends again any delivery that was never stored; it interrupts wrk once every user exists.
-- done() prints one line the bench parses: "RESULT status=count ... healthz=N".

local threads = {}
local counter = 0
local MAX_FALLBACKS = 100

function setup(thread)
   thread:set("thread_index", counter)
   table.insert(threads, thread)
   counter = counter + 1
end

function init(args)
   local thread_count = tonumber(args[2])
   requests, next_request, statuses, healthz, answered = {}, 1, {}, 0, 0
   local line_number = 0
   for line in io.lines(args[1]) do
      if line_number % thread_count == thread_index then
         local id, timestamp, signature, body = line:match("^(%S+) (%S+) (%S+) (.+)$")
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
   total = #requests
end

function request()
   if thread_index == 0 and not verified then
      -- wrk calls request() once on thread 0 to check the request's format, and never sends
      -- that one: hand it the first delivery without using it up.
      verified = true
      return requests[next_request] or fallback
   end
   local chosen = requests[next_request]
   if chosen == nil then
      -- Every delivery of this thread was sent; its other connections wait for their answers.
      -- Bounded: if wrk lost a request (its answer never comes), the fallbacks would spin and
      -- take the worker's CPU; the bench re-sends what was never stored.
      healthz = healthz + 1
      if healthz >= MAX_FALLBACKS then
         wrk.thread:stop()
      end
      return fallback
   end
   requests[next_request] = nil  -- sent once
   next_request = next_request + 1
   return chosen
end

function response(status, headers, body)
   if status == 200 and body:find('"status":%s*"ok"') then
      return  -- a /healthz fallback
   end
   statuses[status] = (statuses[status] or 0) + 1
   answered = answered + 1
   if answered >= total then
      wrk.thread:stop()
   end
end

function done(summary, latency, requests)
   local totals, healthz_total = {}, 0
   for _, thread in ipairs(threads) do
      healthz_total = healthz_total + thread:get("healthz")
      for status, count in pairs(thread:get("statuses")) do
         totals[status] = (totals[status] or 0) + count
      end
   end
   local parts = {}
   for status, count in pairs(totals) do
      parts[#parts + 1] = string.format("%d=%d", status, count)
   end
   io.write(string.format("RESULT %s healthz=%d\n", table.concat(parts, " "), healthz_total))
end

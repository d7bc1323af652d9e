-- POST /users with a unique email per request; counts the 201s.
-- The API key comes from wrk -H (bench/measure.py): wrk.format uses
-- wrk.headers, which holds it; init only adds Content-Type.
-- Seeded from /dev/urandom, not the clock: wrks started in the same second
-- (one per server, bench/deployments.py) would otherwise send the same emails.
local function urandom_seed()
  local source = io.open("/dev/urandom", "rb")
  local a, b, c, d = source:read(4):byte(1, 4)
  source:close()
  return ((a * 256 + b) * 256 + c) * 256 + d
end

-- Globals, not locals: done() reads them from each thread with thread:get.
counter = 0
created = 0
threads = {}

function setup(thread)
  thread:set("id", #threads)
  thread:set("seed", urandom_seed())
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(seed)
  run = math.random(1, 1000000000)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local body = string.format('{"name": "bench", "email": "u%d-%d-%d@example.com"}',
                             run, id, counter)
  return wrk.format(nil, "/users", nil, body)
end

function response(status, headers, body)
  if status == 201 then created = created + 1 end
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do total = total + thread:get("created") end
  io.write(string.format("created %d\n", total))
end

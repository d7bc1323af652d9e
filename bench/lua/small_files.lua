-- POST /files with a 4 KiB multipart file part, different bytes every time
-- (identical bytes would only take the server's de-duplicating path): the
-- first 30 bytes name the wrk thread, a random run number and a counter.
-- The API key comes from wrk -H (bench/measure.py), in wrk.headers.
local boundary = "----benchboundary4KiB"
local filler = string.rep("x", 4096 - 30)
local head = "--" .. boundary .. "\r\n" ..
  'Content-Disposition: form-data; name="file"; filename="small.bin"\r\n' ..
  "Content-Type: application/octet-stream\r\n\r\n"
local tail = "\r\n--" .. boundary .. "--\r\n"
-- Seeded from /dev/urandom, not the clock: wrks started in the same second
-- (one per server, bench/deployments.py) would otherwise send the same bytes.
local function urandom_seed()
  local source = io.open("/dev/urandom", "rb")
  local a, b, c, d = source:read(4):byte(1, 4)
  source:close()
  return ((a * 256 + b) * 256 + c) * 256 + d
end
local threads = 0
local counter = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end

function init(args)
  math.randomseed(urandom_seed())
  run = math.random(0, 999999999)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary
end

function request()
  counter = counter + 1
  local payload = string.format("%06d%09d%015d", thread_id, run, counter) .. filler
  return wrk.format(nil, nil, nil, head .. payload .. tail)
end

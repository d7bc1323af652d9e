-- POST /files with a 4 KiB multipart file part.
local boundary = "----benchboundary4KiB"
local payload = string.rep("x", 4096)

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary
  wrk.body = "--" .. boundary .. "\r\n" ..
    'Content-Disposition: form-data; name="file"; filename="small.bin"\r\n' ..
    "Content-Type: application/octet-stream\r\n\r\n" ..
    payload .. "\r\n--" .. boundary .. "--\r\n"
end

-- Refusals that close the connection (400, 413, 431) must reach a client
-- that writes its whole request before it reads, as most HTTP clients do.
-- Closing with the request unread makes the kernel answer the rest of the
-- upload with a reset, and the client sees "connection reset" instead of the
-- answer; the server therefore shuts down its write side and discards what
-- still arrives for a bounded time before closing.
local T = require "spec.e2e.support"
local socket = require "socket"

local MiB = 1024 * 1024
local TRIES = 10

-- Sends `request` in full, then reads to the end: status, whether the body
-- is complete, and the first error met.
local function send_then_read(port, request)
  local c = socket.tcp()
  c:settimeout(10)
  local ok, err = c:connect("127.0.0.1", port)
  if not ok then c:close() return nil, false, err end
  local sent, serr = c:send(request)
  if not sent then c:close() return nil, false, "send: " .. tostring(serr) end
  local resp, rerr, partial = c:receive("*a")
  c:close()
  resp = resp or partial or ""
  local status = tonumber(resp:match("^HTTP/1%.1 (%d+)"))
  local head, body = resp:match("^(.-)\r\n\r\n(.*)$")
  local len = head and tonumber(head:match("\r\n[Cc]ontent%-[Ll]ength: (%d+)"))
  local complete = len ~= nil and #body == len
  return status, complete, rerr
end

local function chunked(total)
  local piece = ("x"):rep(16 * 1024)
  local parts = {}
  for i = 1, total / #piece do parts[i] = ("%x\r\n%s\r\n"):format(#piece, piece) end
  return table.concat(parts) .. "0\r\n\r\n"
end

local CASES = {
  { name = "a 1 MiB body with Content-Length", status = 413,
    request = "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: " .. MiB .. "\r\n\r\n" .. ("x"):rep(MiB) },
  { name = "a 1 MiB chunked body", status = 413,
    request = "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" .. chunked(MiB) },
  { name = "a 1 MiB header", status = 431,
    request = "GET /hello/x HTTP/1.1\r\nHost: t\r\nX-Big: " .. ("a"):rep(MiB) .. "\r\n\r\n" },
  { name = "1 MiB of garbage", status = 400,
    request = "NOT HTTP AT ALL\r\n" .. ("\1\2garbage"):rep(MiB / 9) },
}

describe("refusals that close the connection", function()
  local proc
  setup(function() proc = T.start({ "--workers", "1", "examples/hello.lua" }) end)
  teardown(function() T.stop(proc) end)

  for _, case in ipairs(CASES) do
    it("reach a client that first writes " .. case.name, function()
      local got, errors = 0, {}
      for _ = 1, TRIES do
        local status, complete, err = send_then_read(proc.port, case.request)
        if status == case.status and complete then got = got + 1
        else errors[#errors + 1] = tostring(status) .. "/" .. tostring(err) end
      end
      assert.are.equal(TRIES, got, ("%d of %d answered; others: %s"):format(got, TRIES, table.concat(errors, ", ")))
    end)
  end

  it("reach a client whose request stalled past the read timeout (408)", function()
    local slow = T.start({ "--workers", "1", "examples/hello.lua" }, { HTTP_READ_TIMEOUT_MS = "200" })
    local got, errors = 0, {}
    for _ = 1, TRIES do
      local c = socket.tcp()
      c:settimeout(10)
      assert(c:connect("127.0.0.1", slow.port))
      assert(c:send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 16000\r\n\r\n" .. ("x"):rep(8000)))
      T.sleep(0.3) -- the server answers 408 meanwhile; the client goes on with its upload
      -- never the whole body: the request must end by the timeout, however slow the server
      local sent, serr = c:send(("x"):rep(2000))
      T.sleep(0.05)
      if sent then sent, serr = c:send(("x"):rep(2000)) end
      local resp, rerr, partial = c:receive("*a")
      c:close()
      resp = resp or partial or ""
      if sent and resp:match("^HTTP/1%.1 408") and resp:match("}$") then got = got + 1
      else errors[#errors + 1] = "send: " .. tostring(serr or rerr) end
    end
    T.stop(slow)
    assert.are.equal(TRIES, got, ("%d of %d answered; others: %s"):format(got, TRIES, table.concat(errors, ", ")))
  end)

  it("do not let a client that keeps sending hold the connection", function()
    local c = socket.tcp()
    c:settimeout(1)
    assert(c:connect("127.0.0.1", proc.port))
    assert(c:send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: " .. MiB .. "\r\n\r\n"))
    local started, closed_after = T.now(), nil
    local piece = ("x"):rep(1024)
    for _ = 1, 200 do -- at most 10 s of dribbling
      local ok = c:send(piece)
      if not ok then closed_after = T.now() - started break end
      T.sleep(0.05)
    end
    c:close()
    assert.is_not_nil(closed_after, "the server still read after 10 s")
    assert.is_true(closed_after < 4, ("closed after %.1f s"):format(closed_after))
    -- and the server still serves
    assert.are.equal(200, (T.request(proc.port, "GET", "/hello/after")))
  end)
end)

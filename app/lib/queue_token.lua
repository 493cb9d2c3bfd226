-- Waiting-room tickets and admission tokens: their text form and signatures.
-- Pure (the HMAC comes from flashhost.crypto, passed in), so every branch is
-- unit-tested.
--
--   ticket  "<gen>.<seq>.<userId>.<mac>"   mac: 32 hex of HMAC-SHA256 over
--           ("ticket", sku, gen, seq, user) -- names the holder's place in one
--           sale generation's queue; a poll can be answered from it and the
--           serving counter alone, without Redis
--   token   "<gen>.<seq>.<expiresAt>.<mac>"  mac: 64 hex of HMAC-SHA256 over
--           ("token", sku, user, gen.seq, expiresAt) -- lets that user buy on
--           that SKU until expiresAt (epoch ms)
--
-- Both MACs cover the SKU and the user, so a ticket of another SKU or a token
-- of another user does not verify.  Comparisons are constant-time.
local M = {}

M.MIN_SECRET = 16 -- bytes: shorter secrets are refused at start

-- new(secret, crypto) -> signer; crypto = { hmac_sha256_hex, equal }.
function M.new(secret, crypto)
  if type(secret) ~= "string" or #secret < M.MIN_SECRET then
    error("QUEUE_SECRET must be at least " .. M.MIN_SECRET .. " bytes", 2)
  end
  local S = {}
  local function mac(...) return crypto.hmac_sha256_hex(secret, table.concat({ ... }, "\n")) end

  function S.ticket(sku, gen, seq, user)
    return ("%s.%d.%s.%s"):format(gen, seq, user, mac("ticket", sku, gen, seq, user):sub(1, 32))
  end

  -- -> { gen, seq, user, id } | nil  (id = "gen:seq", the ticket's name in Redis keys)
  function S.parse_ticket(sku, text)
    if type(text) ~= "string" or #text > 120 then return nil end
    local gen, seq, user, m = text:match("^(%d+)%.(%d+)%.(%d+)%.(%x+)$")
    if not gen or #m ~= 32 or #seq > 12 then return nil end
    if not crypto.equal(m, mac("ticket", sku, gen, tonumber(seq), user):sub(1, 32)) then return nil end
    return { gen = gen, seq = tonumber(seq), user = user, id = gen .. ":" .. seq }
  end

  function S.token(sku, user, gen, seq, expires_at)
    return ("%s.%d.%d.%s"):format(gen, seq, expires_at, mac("token", sku, user, gen .. "." .. seq, expires_at))
  end

  -- -> { gen, seq, expiresAt, id } | nil, "QUEUE_TOKEN_INVALID"
  -- A token past its expiry is as invalid as a forged one: its place is gone.
  function S.parse_token(sku, user, text, now)
    if type(text) ~= "string" or #text > 160 then return nil, "QUEUE_TOKEN_INVALID" end
    local gen, seq, exp, m = text:match("^(%d+)%.(%d+)%.(%d+)%.(%x+)$")
    if not gen or #m ~= 64 or #seq > 12 or #exp > 15 then return nil, "QUEUE_TOKEN_INVALID" end
    if not crypto.equal(m, mac("token", sku, user, gen .. "." .. seq, tonumber(exp))) then
      return nil, "QUEUE_TOKEN_INVALID"
    end
    if now >= tonumber(exp) then return nil, "QUEUE_TOKEN_INVALID", "expired" end
    return { gen = gen, seq = tonumber(seq), expiresAt = tonumber(exp), id = gen .. ":" .. seq }
  end

  return S
end

-- The purchase idempotency key a token buys under: one token, one purchase
-- (a second one replays the first answer).  "q " + ticket: a client's own key
-- cannot hold a space, so only a checked token leads to such a key, and the
-- purchase function takes it as the proof of admission a queued sale needs
-- (redis-lua/flashhost.lua, QUEUE_IDEM_PREFIX; the keeper reads it too).
function M.idempotency_key(t) return "q " .. t.id end

return M

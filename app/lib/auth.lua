-- Bearer-token authentication (AUTH=jwt): an HS256 token whose `sub` is the
-- user the request acts for.  With AUTH=none every request is trusted.
local cjson = require "cjson.safe"
local refusal = require("lib.answers").refusal

local M = {}
M.PLACEHOLDER_SECRET = "change-me-in-production"

-- Reads AUTH and JWT_SECRET; raises (refusing to start) on an unsafe setup.
function M.config(env)
  env = env or os.getenv
  local mode = env("AUTH") or "none"
  if mode ~= "none" and mode ~= "jwt" then error("AUTH must be none or jwt, not " .. mode, 0) end
  local secret = env("JWT_SECRET")
  if mode == "jwt" and (not secret or secret == "" or secret == M.PLACEHOLDER_SECRET) then
    error("AUTH=jwt needs a real JWT_SECRET (the placeholder is refused)", 0)
  end
  return { mode = mode, secret = secret }
end

-- Returns the token's subject, or nil, status, body.
-- `verify` is flashhost.jwt.verify_hs256 (injected so unit specs need no C).
function M.subject(cfg, req, verify, now_ms)
  if cfg.mode ~= "jwt" then return true end
  local h = req.headers and req.headers["authorization"]
  local token = h and h:match("^[Bb]earer%s+(%S+)$")
  if not token then
    return nil, refusal(401, "UNAUTHORIZED", "missing bearer token")
  end
  local claims_json = verify(token, cfg.secret)
  local claims = claims_json and cjson.decode(claims_json)
  if type(claims) ~= "table" then
    return nil, refusal(401, "UNAUTHORIZED", "invalid token")
  end
  if type(claims.exp) == "number" and claims.exp * 1000 <= now_ms then
    return nil, refusal(401, "UNAUTHORIZED", "token expired")
  end
  local sub = claims.sub
  if type(sub) == "number" then sub = ("%d"):format(sub) end
  if type(sub) ~= "string" or sub == "" then
    return nil, refusal(401, "UNAUTHORIZED", "token has no subject")
  end
  return sub
end

-- Checks that the token's subject is `user`; returns nil or status, body.
function M.require_user(cfg, req, user, verify, now_ms)
  if cfg.mode ~= "jwt" then return nil end
  local sub, status, body = M.subject(cfg, req, verify, now_ms)
  if not sub then return status, body end
  if sub ~= user then
    return refusal(403, "FORBIDDEN", "the token belongs to another user")
  end
  return nil
end

return M

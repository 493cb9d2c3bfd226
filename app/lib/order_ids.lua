-- The ids of a purchase batch, made from one block of ids so that an order
-- id leads to its reservation by construction.
--
-- A block is 256 consecutive ids whose first, B, is a multiple of 256
-- (core.id_block).  Attempt i (1..128) of the batch gets the order id B + i - 1
-- and the reservation id B + 128 + i - 1.  So an order id X is of a block
-- when X mod 256 < 128; its reservation is X + 128 and its block X - (X mod 256).
-- The order index then needs one entry per batch (block -> SKU) where it
-- needed one per purchase.
--
-- Ids are decimal texts of 64-bit numbers, too big for a Lua number; the
-- arithmetic here touches only the last 9 digits.  1e9 is a multiple of 256,
-- so X mod 256 is (its last 9 digits) mod 256, and adding up to 255 to a
-- multiple of 256 never carries past those digits.  The same steps, in Redis's
-- Lua, are in redis-lua/flashhost.lua (is_block_start).
local M = {}

M.BLOCK = 256
M.MAX_BATCH = 128 -- attempts per block: the first half names orders, the second reservations

local LOW = 9

-- (the digits before the last 9, the last 9 as a number) | nil when id is no id
local function split(id)
  if type(id) ~= "string" or not id:find("^%d+$") or #id > 20 then return nil end
  if #id <= LOW then return "", tonumber(id) end
  return id:sub(1, -LOW - 1), tonumber(id:sub(-LOW))
end

local function join(high, low)
  if high == "" then return string.format("%d", low) end
  return high .. string.format("%09d", low)
end

-- The order id and reservation id of attempt i (1-based) of the batch of block `base`.
function M.of_block(base, i)
  local high, low = split(base)
  assert(high and low % M.BLOCK == 0, "not a block's first id: " .. tostring(base))
  assert(i >= 1 and i <= M.MAX_BATCH, "attempt " .. tostring(i) .. " is outside a block")
  return join(high, low + i - 1), join(high, low + M.MAX_BATCH + i - 1)
end

-- Names every attempt's orderId and reservationId from block `base`
-- (attempts[i].ids, as stock.purchase_batch takes them).
function M.assign(base, attempts)
  assert(#attempts <= M.MAX_BATCH, #attempts .. " attempts do not fit a block of " .. M.MAX_BATCH)
  for i, a in ipairs(attempts) do
    a.ids.orderId, a.ids.reservationId = M.of_block(base, i)
  end
end

-- locate(orderId) -> the first id of its block, its reservation id | nil (an
-- id no block names as an order: an older order, or no order at all)
function M.locate(orderId)
  local high, low = split(orderId)
  if not high then return nil end
  local pos = low % M.BLOCK
  if pos >= M.MAX_BATCH then return nil end
  return join(high, low - pos), join(high, low + M.MAX_BATCH)
end

return M

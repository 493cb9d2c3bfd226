-- Business rules of the flash sale.  Operators edit this file and reload
-- (kill -HUP <master pid>, or run with --watch): new values apply to the next
-- request, no request is dropped.  A file that fails to load is refused and
-- the running rules stay.  A sale's own settings (perUserLimit,
-- reservationTtlSec) win over these defaults.
return {
  -- token bucket per user and SKU: `capacity` quick attempts, refilled at `refill_per_sec`
  rate_limit = { capacity = 20, refill_per_sec = 5 },
  -- tickets one user may hold per SKU (pending + paid); 0 = no limit
  per_user_limit = 1,
  -- how long an unpaid reservation holds its tickets
  reservation_ttl_sec = 300,
  -- largest quantity one purchase may ask for
  max_quantity = 10,
  -- a worker that saw a SKU sold out answers 410 from memory for this long
  sold_out_mark_ms = 500,
  -- group commit: at most this many attempts of one SKU in one purchase_batch call
  -- (128 at most: a batch names its ids from one block, lib/order_ids)
  purchase_batch_max = 128,
  -- Retry-After (seconds) sent with 503 when a dependency is down
  retry_after_unavailable_sec = 1,

  messages = {
    reserved = "Tickets reserved. Complete payment before the reservation expires.",
    sold_out = "Sorry, this item is sold out.",
    sale_ended = "This sale has ended.",
    not_started = "This sale has not started yet.",
    limit = "You have reached the purchase limit for this item.",
    rate_limited = "Too many attempts. Please slow down.",
    unavailable = "The service is busy. Please retry shortly.",
    unknown_sku = "No sale for this item.",
  },
}

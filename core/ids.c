/* Clocks and Snowflake ids.
 * An id is 41 bits of milliseconds since FH_EPOCH_MS, 5 bits NODE_ID, 5 bits
 * worker index and a 12-bit sequence, so ids from every worker of every node
 * are unique without coordination (32 nodes x 32 workers, 4096 ids/ms each).
 * A block is FH_ID_BLOCK consecutive ids whose first is a multiple of
 * FH_ID_BLOCK (its sequence's low bits are zero): a purchase batch takes one
 * and names its orders and reservations from it (app/lib/order_ids.lua), 16
 * blocks per millisecond. */
#include "fh.h"
#include <time.h>

#define FH_EPOCH_MS 1704067200000LL /* 2024-01-01T00:00:00Z */

int64_t fh_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t fh_mono_ns(void) { return uv_hrtime(); }

/* One generator per process: the last millisecond handed out and the last
 * sequence number used in it. */
static int64_t last_ms = 0;
static uint32_t seq = 0;

static uint64_t compose(int64_t ms, uint32_t s) {
  uint64_t worker = (uint64_t)(fh_worker_id() < 0 ? 0 : fh_worker_id()) & 0x1f;
  uint64_t node = (uint64_t)fh_node_id() & 0x1f;
  return ((uint64_t)(ms - FH_EPOCH_MS) << 22) | (node << 17) | (worker << 12) | s;
}

/* A clock stepping backwards must not repeat ids: keep using the last
 * millisecond we handed out until the wall clock catches up. */
static int64_t clock_ms(void) {
  int64_t now = fh_now_ms();
  return now < last_ms ? last_ms : now;
}

uint64_t fh_id_next(void) {
  int64_t now = clock_ms();
  if (now == last_ms) {
    seq = (seq + 1) & 0xfff;
    if (seq == 0) now = ++last_ms; /* sequence exhausted: borrow the next ms */
  } else {
    seq = 0;
  }
  last_ms = now;
  return compose(now, seq);
}

uint64_t fh_id_block(void) {
  int64_t now = clock_ms();
  uint32_t start = 0;
  if (now == last_ms) {
    /* the first aligned start after the sequence numbers already used */
    start = (seq + FH_ID_BLOCK) & ~(uint32_t)(FH_ID_BLOCK - 1);
    if (start + FH_ID_BLOCK > 0x1000) { now = ++last_ms; start = 0; }
  }
  last_ms = now;
  seq = start + FH_ID_BLOCK - 1;
  return compose(now, start);
}

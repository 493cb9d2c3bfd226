/* Clocks and Snowflake ids.
 * An id is 41 bits of milliseconds since FH_EPOCH_MS, 5 bits NODE_ID, 5 bits
 * worker index and a 12-bit sequence, so ids from every worker of every node
 * are unique without coordination (32 nodes x 32 workers, 4096 ids/ms each). */
#include "fh.h"
#include <time.h>

#define FH_EPOCH_MS 1704067200000LL /* 2024-01-01T00:00:00Z */

int64_t fh_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t fh_mono_ns(void) { return uv_hrtime(); }

uint64_t fh_id_next(void) {
  static int64_t last_ms = 0;
  static uint32_t seq = 0;
  int64_t now = fh_now_ms();
  /* A clock stepping backwards must not repeat ids: keep using the last
   * millisecond we handed out until the wall clock catches up. */
  if (now < last_ms) now = last_ms;
  if (now == last_ms) {
    seq = (seq + 1) & 0xfff;
    if (seq == 0) now = ++last_ms; /* sequence exhausted: borrow the next ms */
  } else {
    seq = 0;
  }
  last_ms = now;
  uint64_t worker = (uint64_t)(fh_worker_id() < 0 ? 0 : fh_worker_id()) & 0x1f;
  uint64_t node = (uint64_t)fh_node_id() & 0x1f;
  return ((uint64_t)(now - FH_EPOCH_MS) << 22) | (node << 17) | (worker << 12) | seq;
}

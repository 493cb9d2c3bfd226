/*
 * flashhost.kafka.driver, internal: what the producer, the consumer and the
 * admin calls share (core/kafka.c).
 *
 * Every handle that lives on the loop (a producer, a consumer, a
 * create_topics call) is an fh_kafka_client embedded as the first member of
 * its owner.  The client watches one queue: librdkafka
 * writes to an eventfd when the queue goes from empty to non-empty (edge
 * triggered), a uv_poll on that fd and a slow tick timer call `poll_queue`,
 * which must poll the queue empty.  log.queue=true brings librdkafka's log
 * lines onto that same queue, so every callback of ours (logs, delivery
 * reports, rebalances, commit results) runs on the loop thread, inside
 * `poll_queue` — never on a librdkafka thread, and Lua is never called from there.
 *
 * Teardown never blocks the loop: the queue reference is dropped and the io
 * event disabled on the loop thread, then `before_destroy` (consumer close,
 * bounded flush) and rd_kafka_destroy run on a libuv threadpool thread, and
 * `release` runs back on the loop once the handle is gone and both libuv
 * handles are closed.
 */
#ifndef FH_KAFKA_INT_H
#define FH_KAFKA_INT_H
#include "fh.h"
#include <librdkafka/rdkafka.h>

enum { FH_KAFKA_NEW = 0, FH_KAFKA_OPEN, FH_KAFKA_CLOSING };

typedef struct fh_kafka_client fh_kafka_client;
struct fh_kafka_client {
  rd_kafka_t *rk;
  rd_kafka_queue_t *q;        /* the watched queue; NULL after teardown */
  int efd;
  int state;
  int refs;                   /* teardown steps still to finish */
  int destroy_flags;          /* for rd_kafka_destroy_flags */
  uv_poll_t poll;
  uv_timer_t tick;
  uv_work_t work;
  /* Loop thread: poll the queue empty. */
  void (*poll_queue)(fh_kafka_client *kc);
  /* Threadpool thread, right before rd_kafka_destroy; may be NULL. */
  void (*before_destroy)(fh_kafka_client *kc);
  /* Loop thread: the handle is destroyed and nothing refers to kc any more. */
  void (*release)(fh_kafka_client *kc);
};

/* Builds a configuration from the string map at `idx` (the facade fills in
 * every default), forces log.queue=true, and installs the log callback and
 * `opaque`.  The caller must route the logs with rd_kafka_set_log_queue.
 * Raises on a property librdkafka rejects: that is a programming mistake. */
rd_kafka_conf_t *fh_kafka_conf(lua_State *L, int idx, void *opaque);

/* Starts watching `q` (ownership of the reference passes to kc): eventfd,
 * io event, uv_poll, a tick every `tick_ms`, and one poll_queue right away, for
 * what was enqueued before the io event existed.  Returns 0 or a negative
 * errno; on failure nothing was started and q is still the caller's. */
int fh_kafka_client_start(fh_kafka_client *kc, rd_kafka_queue_t *q, unsigned tick_ms);

/* Starts the non-blocking teardown described above; `release` follows.
 * Call once, from the loop thread, after a successful start. */
void fh_kafka_client_teardown(fh_kafka_client *kc);

/* The librdkafka log callback: one fh_log line per librdkafka log line. */
void fh_kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf);

/* The kind of an error (fh.h): timeout, busy, closed, not_connected, or
 * librdkafka's name for it (rd_kafka_err2name). */
const char *fh_kafka_kind(rd_kafka_resp_err_t err);

/* Text for an error: rd_kafka_err2str, or the fatal error's own reason. */
const char *fh_kafka_errstr(rd_kafka_t *rk, rd_kafka_resp_err_t err, char *buf, size_t size);

/* Reads an optional timeout in ms at `idx`: raises if negative or NaN,
 * clamps to INT32_MAX (librdkafka's timeouts are ints). */
int fh_kafka_check_ms(lua_State *L, int idx, int dflt);

/* Reads an optional integer option `name` from the table at `idx`. */
lua_Integer fh_kafka_opt_int(lua_State *L, int idx, const char *name, lua_Integer dflt);

/* Each part registers its class and adds its functions to the module table
 * on top of the stack. */
void fh_kafka_producer_open(lua_State *L);
void fh_kafka_consumer_open(lua_State *L);
void fh_kafka_admin_open(lua_State *L);

#endif

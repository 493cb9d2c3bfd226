/*
 * flashhost.kafka.driver: the producer.
 *
 * A send is a batch (kafka.lua's produce is a batch of one): the facade
 * makes a batch of n slots, `send`s each message into its slot without
 * yielding (librdkafka copies it), then `wait`s once: the coroutine sleeps
 * until every sent message has its delivery report.  A slot is the message's
 * opaque, so the report finds its batch directly.  Retrying on a full queue
 * (sleep, send again) is the facade's business; `send` only answers
 * nil, "queue full" after serving the delivery reports once.
 *
 * Delivery reports are served by rd_kafka_poll in `poll_queue` on the loop
 * thread.  The report callback only records; coroutines are resumed after
 * rd_kafka_poll returned, so Lua never runs inside librdkafka.
 *
 * Lifetimes.  The producer userdata holds a pointer to the struct; the struct
 * is freed by `release` once the handle is destroyed (kafka.c).  A batch
 * struct outlives its userdata while reports are still due; it is freed by
 * whichever comes last: its __gc, its last report, or the producer's release.
 * __gc on an open producer (always at lua_close in practice: a waiting
 * coroutine keeps its producer reachable) forgets every waiter, flushes for
 * at most close_timeout_ms on the threadpool, and destroys.
 */
#include "kafka_int.h"
#include <stdlib.h>
#include <string.h>
#include <stdio.h>

#define FH__PRODUCER "flashhost.kafka.producer"
#define FH__BATCH "flashhost.kafka.batch"
#define FH__TICK_MS 1000
#define FH__MAX_BATCH 1000000

typedef struct fh_kafka_producer__t fh_kafka_producer__t;
typedef struct fh_kafka_producer__batch fh_kafka_producer__batch;

enum { FH__UNSENT = 0, FH__PENDING, FH__REPORTED };

typedef struct {
  fh_kafka_producer__batch *b;
  int state;
  rd_kafka_resp_err_t err;
} fh_kafka_producer__slot;

struct fh_kafka_producer__batch {
  fh_kafka_producer__t *p;          /* NULL once the producer is released */
  fh_kafka_producer__batch *prev, *next;   /* p->batches */
  fh_kafka_producer__batch *ready_next;    /* p->ready */
  int on_ready;
  lua_State *co;            /* waiting in wait() */
  int lua_alive;
  int n, sent, reported, ok;
  fh_kafka_producer__slot slots[];
};

struct fh_kafka_producer__t {
  fh_kafka_client kc;       /* first: kafka.c hands us &p->kc */
  fh_kafka_producer__t **box;       /* the userdata's slot; NULL after __gc */
  fh_kafka_producer__batch *batches;
  fh_kafka_producer__batch *ready;         /* every report in, waiter to resume */
  fh_waitq flush_waits;      /* tasks inside flush() */
  lua_State *closer;
  int detached;             /* no report may touch a batch any more */
  int close_timeout_ms;
  size_t undelivered;       /* left in the queue when close() gave up */
};

/* ---- batches -------------------------------------------------------------- */

static void fh_kafka_producer__batch_unlink(fh_kafka_producer__batch *b) {
  fh_kafka_producer__t *p = b->p;
  if (!p) return;
  if (b->prev) b->prev->next = b->next; else p->batches = b->next;
  if (b->next) b->next->prev = b->prev;
  b->prev = b->next = NULL;
}

static void fh_kafka_producer__batch_free(fh_kafka_producer__batch *b) {
  fh_kafka_producer__batch_unlink(b);
  free(b);
}

/* A report arrived for b: wake its waiter, or free it if nobody will. */
static void fh_kafka_producer__batch_reported(fh_kafka_producer__batch *b) {
  if (b->reported < b->sent) return;
  if (b->co) {
    if (!b->on_ready) {
      b->on_ready = 1;
      b->ready_next = b->p->ready;
      b->p->ready = b;
    }
  } else if (!b->lua_alive) {
    fh_kafka_producer__batch_free(b);
  }
}

/* Answers every pending slot of b with `err` (the handle is going away). */
static void fh_kafka_producer__batch_give_up(fh_kafka_producer__batch *b, rd_kafka_resp_err_t err) {
  for (int i = 0; i < b->n; i++) {
    if (b->slots[i].state != FH__PENDING) continue;
    b->slots[i].state = FH__REPORTED;
    b->slots[i].err = err;
    b->reported++;
  }
}

/* wait()'s answer: ok_count, { [i] = "error" } and { [i] = kind } for each
 * failed report. */
static int fh_kafka_producer__push_result(lua_State *L, fh_kafka_producer__batch *b) {
  lua_pushinteger(L, b->ok);
  lua_newtable(L);
  lua_newtable(L);
  for (int i = 0; i < b->n; i++) {
    if (b->slots[i].state == FH__REPORTED && b->slots[i].err) {
      lua_pushstring(L, rd_kafka_err2str(b->slots[i].err));
      lua_rawseti(L, -3, i + 1);
      lua_pushstring(L, fh_kafka_kind(b->slots[i].err));
      lua_rawseti(L, -2, i + 1);
    }
  }
  return 3;
}

/* ---- delivery reports and flush waiters --------------------------------- */

static void fh_kafka_producer__dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
  fh_kafka_producer__t *p = opaque;
  fh_kafka_producer__slot *s = m->_private;
  /* Detached: the final flush runs on the threadpool after __gc or close;
   * the batches belong to the loop thread and nobody waits any more. */
  if (p->detached || !s || s->state != FH__PENDING) return;
  fh_kafka_producer__batch *b = s->b;
  s->state = FH__REPORTED;
  s->err = m->err;
  b->reported++;
  if (!m->err) b->ok++;
  fh_kafka_producer__batch_reported(b);
}

static void fh_kafka_producer__error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
  /* Errors here are informational (librdkafka retries); a message that
   * cannot be delivered says so in its own report.  This may run on the
   * threadpool during a final flush: log only. */
  int fatal = err == RD_KAFKA_RESP_ERR__FATAL;
  /* A failed connection already came through as a librdkafka log line. */
  if (err == RD_KAFKA_RESP_ERR__TRANSPORT) return;
  fh_log(fatal ? FH_LOG_ERROR : FH_LOG_WARN, "kafka %s: %s%s", rd_kafka_name(rk),
         fatal ? "fatal: " : "", reason);
}

/* The out-queue is empty: every flush() in progress answers true. */
static void fh_kafka_producer__flushers_done(fh_kafka_producer__t *p) {
  fh_waitq now;
  fh_waitq_move(&p->flush_waits, &now);
  lua_State *co;
  while ((co = fh_wait_take(fh_waitq_head(&now)))) {
    lua_pushboolean(co, 1);
    fh_wait_resume(co, 1);
  }
}

/* Resumes what the last rd_kafka_poll completed.  Resumed code may close
 * the producer; p itself stays allocated until release (kafka.c), so only
 * the state needs re-checking. */
static void fh_kafka_producer__settle(fh_kafka_producer__t *p) {
  fh_kafka_producer__batch *b;
  while ((b = p->ready) != NULL) {
    p->ready = b->ready_next;
    b->ready_next = NULL;
    b->on_ready = 0;
    lua_State *co = b->co;
    b->co = NULL;
    if (!co) continue;
    int n = fh_kafka_producer__push_result(co, b);
    fh_wait_resume(co, n);
  }
  if (fh_waitq_head(&p->flush_waits) && p->kc.state == FH_KAFKA_OPEN && rd_kafka_outq_len(p->kc.rk) == 0)
    fh_kafka_producer__flushers_done(p);
}

static void fh_kafka_producer__poll_queue(fh_kafka_client *kc) {
  fh_kafka_producer__t *p = (fh_kafka_producer__t *)kc;
  if (kc->state != FH_KAFKA_OPEN) return;
  while (rd_kafka_poll(kc->rk, 0) > 0) {}
  fh_kafka_producer__settle(p);
}

/* A flush() ends early: its deadline (one last look at the reports first:
 * they may just have emptied the queue), or the producer closes. */
static int fh_kafka_producer__flush_cut(fh_wait *w, lua_State *co, int why) {
  fh_kafka_producer__t *p = fh_wait_data(w);
  if (!co) return 0;
  if (why != FH_WAIT_TIMEOUT) return fh_wait_push_reason(co, why);
  fh_kafka_producer__poll_queue(&p->kc);
  if (p->kc.state == FH_KAFKA_OPEN && rd_kafka_outq_len(p->kc.rk) == 0) {
    lua_pushboolean(co, 1);
    return 1;
  }
  return fh_push_fail(co, FH_KIND_TIMEOUT, "timeout");
}

/* Threadpool, before rd_kafka_destroy, after __gc of an open producer. */
static void fh_kafka_producer__final_flush(fh_kafka_client *kc) {
  fh_kafka_producer__t *p = (fh_kafka_producer__t *)kc;
  rd_kafka_flush(kc->rk, p->close_timeout_ms);
  int left = rd_kafka_outq_len(kc->rk);
  if (left > 0)
    fh_log(FH_LOG_WARN, "kafka %s: dropped without close(); %d messages not delivered",
           rd_kafka_name(kc->rk), left);
}

static void fh_kafka_producer__release(fh_kafka_client *kc) {
  fh_kafka_producer__t *p = (fh_kafka_producer__t *)kc;
  while (p->batches) {
    fh_kafka_producer__batch *b = p->batches;
    fh_kafka_producer__batch_unlink(b);
    b->p = NULL;
    if (!b->lua_alive) free(b);
  }
  if (p->box) *p->box = NULL;
  lua_State *co = p->closer;
  size_t undelivered = p->undelivered;
  free(p);
  if (!co) return;
  if (undelivered) {
    fh_wait_resume(co, fh_push_fail(co, FH_KIND_CLOSED, "closed with %d messages not delivered", (int)undelivered));
  } else {
    lua_pushboolean(co, 1);
    fh_wait_resume(co, 1);
  }
}

/* ---- Lua: producer ---------------------------------------------------------- */

static fh_kafka_producer__t *fh_kafka_producer__check_open(lua_State *L, int idx) {
  fh_kafka_producer__t **box = luaL_checkudata(L, idx, FH__PRODUCER);
  if (!*box || (*box)->kc.state != FH_KAFKA_OPEN) luaL_error(L, "kafka producer is closed");
  return *box;
}

/* producer(conf, opts) -> p.  conf: librdkafka properties (strings);
 * opts: { close_timeout_ms }.  Raises on a configuration librdkafka refuses. */
static int l_kafka_producer_producer(lua_State *L) {
  rd_kafka_conf_t *conf = fh_kafka_conf(L, 1, NULL);
  lua_Integer close_ms = fh_kafka_opt_int(L, 2, "close_timeout_ms", 5000);
  fh_kafka_producer__t **box = lua_newuserdata(L, sizeof *box);
  *box = NULL;
  luaL_getmetatable(L, FH__PRODUCER);
  lua_setmetatable(L, -2);
  fh_kafka_producer__t *p = calloc(1, sizeof *p);
  if (!p) {
    rd_kafka_conf_destroy(conf);
    return luaL_error(L, "out of memory");
  }
  p->close_timeout_ms = close_ms < 0 ? 0 : (int)close_ms;
  rd_kafka_conf_set_opaque(conf, p);
  rd_kafka_conf_set_dr_msg_cb(conf, fh_kafka_producer__dr_cb);
  rd_kafka_conf_set_error_cb(conf, fh_kafka_producer__error_cb);
  char errstr[512];
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
  if (!rk) {
    rd_kafka_conf_destroy(conf);
    free(p);
    return luaL_error(L, "kafka producer: %s", errstr);
  }
  p->kc.rk = rk;
  p->kc.poll_queue = fh_kafka_producer__poll_queue;
  p->kc.release = fh_kafka_producer__release;
  rd_kafka_set_log_queue(rk, NULL); /* log lines onto the main queue */
  rd_kafka_queue_t *q = rd_kafka_queue_get_main(rk);
  int rc = fh_kafka_client_start(&p->kc, q, FH__TICK_MS);
  if (rc != 0) {
    rd_kafka_queue_destroy(q);
    rd_kafka_destroy(rk);
    free(p);
    return fh_push_fail(L, FH_KIND_BUSY, "kafka producer: %s", uv_strerror(rc));
  }
  *box = p;
  p->box = box;
  return 1;
}

/* p:batch(n) -> b, a batch of n message slots. */
static int l_kafka_producer_batch(lua_State *L) {
  fh_kafka_producer__t *p = fh_kafka_producer__check_open(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_argcheck(L, n >= 1 && n <= FH__MAX_BATCH, 2, "batch size out of range");
  fh_kafka_producer__batch **box = lua_newuserdata(L, sizeof *box);
  *box = NULL;
  luaL_getmetatable(L, FH__BATCH);
  lua_setmetatable(L, -2);
  fh_kafka_producer__batch *b = calloc(1, sizeof *b + (size_t)n * sizeof(fh_kafka_producer__slot));
  if (!b) return luaL_error(L, "out of memory");
  b->n = (int)n;
  b->lua_alive = 1;
  for (int i = 0; i < b->n; i++) b->slots[i].b = b;
  b->p = p;
  b->next = p->batches;
  if (p->batches) p->batches->prev = b;
  p->batches = b;
  *box = b;
  return 1;
}

/* p:flush(ms) -> true | nil, "timeout", "timeout": yields until every message queued
 * so far has its delivery report (the out-queue is empty). */
static int l_kafka_producer_flush(lua_State *L) {
  fh_kafka_producer__t *p = fh_kafka_producer__check_open(L, 1);
  int ms = fh_kafka_check_ms(L, 2, 10000);
  fh_kafka_producer__poll_queue(&p->kc);
  if (rd_kafka_outq_len(p->kc.rk) == 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (ms == 0) return fh_push_fail(L, FH_KIND_TIMEOUT, "timeout");
  /* through a generation stop: ms bounds it */
  fh_wait_start(L, ms, 1, &p->flush_waits, fh_kafka_producer__flush_cut, p);
  return lua_yield(L, 0);
}

/* p:outq_len() -> messages (and events) not yet reported. */
static int l_kafka_producer_outq_len(lua_State *L) {
  fh_kafka_producer__t *p = fh_kafka_producer__check_open(L, 1);
  lua_pushinteger(L, rd_kafka_outq_len(p->kc.rk));
  return 1;
}

/* p:close() -> true | nil, "closed with N messages not delivered", "closed".
 * The facade flushes first; what is still queued here is purged, and its
 * waiters get "Local: Purged in queue" (or "... in flight").  Yields until
 * the handle is destroyed (on the threadpool: never blocks the loop). */
static int l_kafka_producer_close(lua_State *L) {
  fh_kafka_producer__t **box = luaL_checkudata(L, 1, FH__PRODUCER);
  fh_kafka_producer__t *p = *box;
  if (!p || p->kc.state != FH_KAFKA_OPEN) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_State *co = fh_wait_begin(L);
  rd_kafka_t *rk = p->kc.rk;
  fh_kafka_producer__poll_queue(&p->kc);
  int left = rd_kafka_outq_len(rk);
  if (left > 0) {
    rd_kafka_purge(rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    while (rd_kafka_poll(rk, 0) > 0) {}
  }
  /* Whatever the purge did not report is answered here: once the queue
   * reference is gone no report reaches us. */
  p->detached = 1;
  size_t undelivered = 0;
  for (fh_kafka_producer__batch *b = p->batches, *next; b; b = next) {
    next = b->next;
    undelivered += (size_t)(b->sent - b->reported);
    fh_kafka_producer__batch_give_up(b, RD_KAFKA_RESP_ERR__DESTROY);
    fh_kafka_producer__batch_reported(b); /* may free b */
  }
  p->undelivered = left > 0 ? (size_t)left : undelivered;
  p->kc.state = FH_KAFKA_CLOSING; /* fh_kafka_producer__settle must not look at rk any more */
  fh_kafka_producer__settle(p);
  fh_waitq_cancel(&p->flush_waits, FH_WAIT_CLOSED);
  p->closer = co;
  fh_kafka_client_teardown(&p->kc);
  return lua_yield(L, 0);
}

static int l_kafka_producer_gc(lua_State *L) {
  fh_kafka_producer__t **box = luaL_checkudata(L, 1, FH__PRODUCER);
  fh_kafka_producer__t *p = *box;
  if (!p) return 0;
  *box = NULL;
  p->box = NULL;
  if (p->kc.state != FH_KAFKA_OPEN) {
    p->closer = NULL; /* a close() whose coroutine is gone with the state */
    return 0;
  }
  /* Only a closing Lua state drops a producer somebody waits on: those
   * coroutines are gone, so nothing is resumed from here on. */
  p->detached = 1;
  for (fh_kafka_producer__batch *b = p->batches; b; b = b->next) {
    b->co = NULL;
    b->on_ready = 0;
    b->ready_next = NULL;
  }
  p->ready = NULL;
  fh_waitq_cancel(&p->flush_waits, FH_WAIT_GONE);
  p->kc.before_destroy = fh_kafka_producer__final_flush;
  fh_kafka_client_teardown(&p->kc);
  return 0;
}

static int l_kafka_producer_tostring(lua_State *L) {
  fh_kafka_producer__t **box = luaL_checkudata(L, 1, FH__PRODUCER);
  if (*box) lua_pushfstring(L, "kafka producer (%s)", rd_kafka_name((*box)->kc.rk));
  else lua_pushliteral(L, "kafka producer (closed)");
  return 1;
}

/* ---- Lua: batch ------------------------------------------------------------- */

static fh_kafka_producer__batch *fh_kafka_producer__check_batch(lua_State *L, int idx) {
  fh_kafka_producer__batch **box = luaL_checkudata(L, idx, FH__BATCH);
  if (!*box) luaL_error(L, "kafka batch is gone");
  return *box;
}

/* A key or value: nil, a string, or a number (sent as its text). */
static const char *fh_kafka_producer__opt_bytes(lua_State *L, int idx, size_t *len, const char *what) {
  int t = lua_type(L, idx);
  if (t == LUA_TNIL || t == LUA_TNONE) { *len = 0; return NULL; }
  if (t != LUA_TSTRING && t != LUA_TNUMBER) luaL_error(L, "message %s must be a string", what);
  return lua_tolstring(L, idx, len);
}

/* headers = { name = value }: copied into a librdkafka list (NULL if none). */
static rd_kafka_headers_t *fh_kafka_producer__headers(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return NULL;
  if (!lua_istable(L, idx)) luaL_error(L, "message headers must be a table");
  rd_kafka_headers_t *h = rd_kafka_headers_new(8);
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    int vt = lua_type(L, -1);
    if (lua_type(L, -2) != LUA_TSTRING || (vt != LUA_TSTRING && vt != LUA_TNUMBER)) {
      rd_kafka_headers_destroy(h);
      luaL_error(L, "message headers must map names to strings");
    }
    size_t vlen;
    lua_pushvalue(L, -1); /* tolstring converts numbers in place: work on a copy */
    const char *v = lua_tolstring(L, -1, &vlen);
    rd_kafka_header_add(h, lua_tostring(L, -3), -1, v, (ssize_t)vlen);
    lua_pop(L, 2);
  }
  return h;
}

/* b:send(i, topic, key, value, headers, partition) -> true | nil, err
 * Never yields.  "queue full" when librdkafka's queue stays full after the
 * delivery reports were served once. */
static int l_kafka_producer_send(lua_State *L) {
  fh_kafka_producer__batch *b = fh_kafka_producer__check_batch(L, 1);
  lua_Integer i = luaL_checkinteger(L, 2);
  luaL_argcheck(L, i >= 1 && i <= b->n, 2, "slot out of range");
  const char *topic = luaL_checkstring(L, 3);
  size_t klen, vlen;
  const char *key = fh_kafka_producer__opt_bytes(L, 4, &klen, "key");
  const char *val = fh_kafka_producer__opt_bytes(L, 5, &vlen, "value");
  lua_Integer part = luaL_optinteger(L, 7, RD_KAFKA_PARTITION_UA);
  luaL_argcheck(L, part >= RD_KAFKA_PARTITION_UA && part <= INT32_MAX, 7, "bad partition");
  fh_kafka_producer__t *p = b->p;
  if (!p || p->kc.state != FH_KAFKA_OPEN) return luaL_error(L, "kafka producer is closed");
  fh_kafka_producer__slot *s = &b->slots[i - 1];
  if (s->state != FH__UNSENT) return luaL_error(L, "message %d of the batch was already sent", (int)i);
  rd_kafka_headers_t *h = fh_kafka_producer__headers(L, 6);

  rd_kafka_vu_t vu[7];
  size_t n = 0;
  vu[n].vtype = RD_KAFKA_VTYPE_TOPIC; vu[n++].u.cstr = topic;
  vu[n].vtype = RD_KAFKA_VTYPE_PARTITION; vu[n++].u.i32 = (int32_t)part;
  vu[n].vtype = RD_KAFKA_VTYPE_MSGFLAGS; vu[n++].u.i = RD_KAFKA_MSG_F_COPY;
  vu[n].vtype = RD_KAFKA_VTYPE_OPAQUE; vu[n++].u.ptr = s;
  if (key) { vu[n].vtype = RD_KAFKA_VTYPE_KEY; vu[n].u.mem.ptr = (void *)key; vu[n++].u.mem.size = klen; }
  if (val) { vu[n].vtype = RD_KAFKA_VTYPE_VALUE; vu[n].u.mem.ptr = (void *)val; vu[n++].u.mem.size = vlen; }
  if (h) { vu[n].vtype = RD_KAFKA_VTYPE_HEADERS; vu[n++].u.headers = h; }

  rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
  for (int attempt = 0; attempt < 2; attempt++) {
    rd_kafka_error_t *e = rd_kafka_produceva(p->kc.rk, vu, n);
    err = e ? rd_kafka_error_code(e) : RD_KAFKA_RESP_ERR_NO_ERROR;
    if (e) rd_kafka_error_destroy(e);
    if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) break;
    /* Served reports free queue space.  Resumes from here are deferred
     * (Lua is running), so p stays open for the retry. */
    fh_kafka_producer__poll_queue(&p->kc);
  }
  if (err) {
    if (h) rd_kafka_headers_destroy(h); /* not taken over on failure */
    if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) return fh_push_fail(L, FH_KIND_BUSY, "queue full");
    char buf[512];
    return fh_push_fail(L, fh_kafka_kind(err), "%s", fh_kafka_errstr(p->kc.rk, err, buf, sizeof buf));
  }
  s->state = FH__PENDING;
  b->sent++;
  lua_pushboolean(L, 1);
  return 1;
}

/* b:wait() -> ok_count, errors, kinds: yields until every sent message of the
 * batch has its delivery report; errors[i] is the report's error text,
 * kinds[i] its kind. */
static int l_kafka_producer_wait(lua_State *L) {
  fh_kafka_producer__batch *b = fh_kafka_producer__check_batch(L, 1);
  if (b->co) return luaL_error(L, "kafka batch is already being waited on");
  if (!b->p) fh_kafka_producer__batch_give_up(b, RD_KAFKA_RESP_ERR__DESTROY);
  if (b->reported >= b->sent) return fh_kafka_producer__push_result(L, b);
  b->co = fh_wait_begin(L);
  return lua_yield(L, 0);
}

static int l_kafka_producer_batch_gc(lua_State *L) {
  fh_kafka_producer__batch **box = luaL_checkudata(L, 1, FH__BATCH);
  fh_kafka_producer__batch *b = *box;
  if (!b) return 0;
  *box = NULL;
  b->lua_alive = 0;
  b->co = NULL;
  /* Reports still due keep it alive; the last one (or release) frees it. */
  if (!b->p || b->reported >= b->sent) {
    if (b->on_ready && b->p) {
      /* cannot happen while a coroutine waits on it; unlink defensively */
      fh_kafka_producer__batch **pp = &b->p->ready;
      while (*pp && *pp != b) pp = &(*pp)->ready_next;
      if (*pp) *pp = b->ready_next;
    }
    fh_kafka_producer__batch_free(b);
  }
  return 0;
}

void fh_kafka_producer_open(lua_State *L) {
  static const luaL_Reg pmethods[] = {
    {"batch", l_kafka_producer_batch}, {"flush", l_kafka_producer_flush}, {"outq_len", l_kafka_producer_outq_len}, {"close", l_kafka_producer_close},
    {"__gc", l_kafka_producer_gc}, {"__tostring", l_kafka_producer_tostring}, {NULL, NULL}};
  static const luaL_Reg bmethods[] = {
    {"send", l_kafka_producer_send}, {"wait", l_kafka_producer_wait}, {"__gc", l_kafka_producer_batch_gc}, {NULL, NULL}};
  fh_new_class(L, FH__PRODUCER, pmethods);
  fh_new_class(L, FH__BATCH, bmethods);
  lua_pushcfunction(L, l_kafka_producer_producer);
  lua_setfield(L, -2, "producer");
}

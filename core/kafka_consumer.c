/*
 * flashhost.kafka.driver: the group consumer.
 *
 * rd_kafka_poll_set_consumer sends everything (fetched messages, rebalances,
 * commit results, log lines, errors) to the consumer queue, which kafka.c
 * watches; `poll_queue` serves it with rd_kafka_consumer_poll(rk, 0) until it is
 * empty, and moves messages into a local buffer that c:poll hands out.  The
 * buffer is bounded (max_buffered): when it is full, poll_queue stops taking
 * messages until the application polls again — librdkafka's own prefetch
 * limits then apply, and a consumer whose application stopped polling leaves
 * the group after max.poll.interval.ms, as it should.
 *
 * Offsets are the application's: enable.auto.commit and
 * enable.auto.offset.store are off.  c:commit stores the offsets (which also
 * tells us which partitions are still ours: storing fails for the others)
 * and commits them with rd_kafka_commit_queue, whose result comes back as an
 * event on a queue of its own (see fh_kafka_consumer__serve_commits); the caller yields
 * until then.
 *
 * Rebalances: on revoke, buffered messages of the revoked partitions are
 * dropped (their new owner reads them from the committed offset), stored
 * offsets not yet committed are committed, and the partitions are unassigned
 * (eager or cooperative, whichever the group uses).
 *
 * Close: rd_kafka_consumer_close blocks for a round trip or more (leave the
 * group, wait for the revoke), so it runs on the threadpool, through
 * rd_kafka_consumer_close_queue, bounded by close_timeout_ms; the caller
 * yields until the handle is destroyed.  __gc does the same without a caller.
 */
#include "kafka_int.h"
#include <stdlib.h>
#include <string.h>
#include <stdio.h>

#define FH__CONSUMER "flashhost.kafka.consumer"
#define FH__TICK_MS 1000

typedef struct fh_kafka_consumer__t fh_kafka_consumer__t;

typedef struct fh_kafka_consumer__commit {
  struct fh_kafka_consumer__commit *next;
  lua_State *co;            /* NULL once given up (close, __gc) */
  int done;
  rd_kafka_resp_err_t err;
} fh_kafka_consumer__commit;

struct fh_kafka_consumer__t {
  fh_kafka_client kc;       /* first: kafka.c hands us &c->kc */
  fh_kafka_consumer__t **box;
  rd_kafka_message_t **buf; /* buf[head .. head+len) */
  size_t head, len, cap, max_buffered;
  fh_waitq poll_waits;      /* tasks inside poll(); each wait's arg is its max */
  fh_kafka_consumer__commit *commits;      /* in flight, done, or given up */
  rd_kafka_queue_t *cq;     /* commit results only: served even when buf is full */
  lua_State *closer;
  int close_timeout_ms;
  char err[256];            /* an error seen since the last answer to poll */
  rd_kafka_resp_err_t err_code;
};

/* ---- the message buffer ------------------------------------------------------ */

static void fh_kafka_consumer__buf_push(fh_kafka_consumer__t *c, rd_kafka_message_t *m) {
  if (c->head + c->len == c->cap) {
    if (c->head > 0) {
      memmove(c->buf, c->buf + c->head, c->len * sizeof *c->buf);
      c->head = 0;
    } else {
      size_t cap = c->cap ? c->cap * 2 : 64;
      rd_kafka_message_t **nb = realloc(c->buf, cap * sizeof *nb);
      /* Dropping a message would let a later commit skip it. */
      if (!nb) abort();
      c->buf = nb;
      c->cap = cap;
    }
  }
  c->buf[c->head + c->len++] = m;
}

static void fh_kafka_consumer__buf_clear(fh_kafka_consumer__t *c) {
  for (size_t i = 0; i < c->len; i++) rd_kafka_message_destroy(c->buf[c->head + i]);
  c->head = c->len = 0;
}

/* Drops buffered messages of partitions that are no longer ours. */
static void fh_kafka_consumer__buf_drop(fh_kafka_consumer__t *c, const rd_kafka_topic_partition_list_t *parts) {
  size_t kept = 0;
  for (size_t i = 0; i < c->len; i++) {
    rd_kafka_message_t *m = c->buf[c->head + i];
    int drop = 0;
    for (int j = 0; j < parts->cnt && !drop; j++)
      drop = parts->elems[j].partition == m->partition &&
             strcmp(parts->elems[j].topic, rd_kafka_topic_name(m->rkt)) == 0;
    if (drop) rd_kafka_message_destroy(m);
    else c->buf[c->head + kept++] = m;
  }
  if (kept < c->len)
    fh_log(FH_LOG_DEBUG, "kafka %s: dropped %zu buffered messages of revoked partitions",
           rd_kafka_name(c->kc.rk), c->len - kept);
  c->len = kept;
}

static void fh_kafka_consumer__push_message(lua_State *L, rd_kafka_message_t *m) {
  lua_createtable(L, 0, 7);
  lua_pushstring(L, rd_kafka_topic_name(m->rkt));
  lua_setfield(L, -2, "topic");
  lua_pushinteger(L, m->partition);
  lua_setfield(L, -2, "partition");
  lua_pushnumber(L, (lua_Number)m->offset);
  lua_setfield(L, -2, "offset");
  if (m->key) {
    lua_pushlstring(L, m->key, m->key_len);
    lua_setfield(L, -2, "key");
  }
  if (m->payload) {
    lua_pushlstring(L, m->payload, m->len);
    lua_setfield(L, -2, "value");
  }
  rd_kafka_timestamp_type_t tstype;
  int64_t ts = rd_kafka_message_timestamp(m, &tstype);
  if (ts >= 0) {
    lua_pushnumber(L, (lua_Number)ts);
    lua_setfield(L, -2, "timestamp");
  }
  lua_newtable(L);
  rd_kafka_headers_t *h = NULL;
  if (rd_kafka_message_headers(m, &h) == RD_KAFKA_RESP_ERR_NO_ERROR) {
    const char *name;
    const void *val;
    size_t size;
    /* A header without a value has nothing to map to: it is left out. */
    for (size_t i = 0; rd_kafka_header_get_all(h, i, &name, &val, &size) == RD_KAFKA_RESP_ERR_NO_ERROR; i++) {
      if (!val) continue;
      lua_pushlstring(L, val, size);
      lua_setfield(L, -2, name);
    }
  }
  lua_setfield(L, -2, "headers");
}

/* Pushes an array of up to `max` buffered messages (and frees them). */
static void fh_kafka_consumer__push_messages(lua_State *L, fh_kafka_consumer__t *c, int max) {
  size_t n = c->len < (size_t)max ? c->len : (size_t)max;
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    rd_kafka_message_t *m = c->buf[c->head];
    c->head++;
    c->len--;
    fh_kafka_consumer__push_message(L, m);
    lua_rawseti(L, -2, (int)i + 1);
    rd_kafka_message_destroy(m);
  }
  if (c->len == 0) c->head = 0;
  if (n > 0) c->err[0] = 0; /* messages answer the poll; the error was logged */
}

/* ---- callbacks (loop thread, inside rd_kafka_consumer_poll) ----------------- */

static void fh_kafka_consumer__note_error(fh_kafka_consumer__t *c, rd_kafka_resp_err_t err, const char *what) {
  /* A dropped connection is retried by librdkafka and already came through
   * as a log line; the poll answer is kept for errors worth acting on. */
  if (err == RD_KAFKA_RESP_ERR__PARTITION_EOF || err == RD_KAFKA_RESP_ERR__TRANSPORT) return;
  fh_log(FH_LOG_WARN, "kafka %s: %s", rd_kafka_name(c->kc.rk), what);
  snprintf(c->err, sizeof c->err, "%.255s", what);
  c->err_code = err;
}

static void fh_kafka_consumer__error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
  fh_kafka_consumer__t *c = opaque;
  char buf[512];
  if (err == RD_KAFKA_RESP_ERR__FATAL) reason = fh_kafka_errstr(rk, err, buf, sizeof buf);
  fh_kafka_consumer__note_error(c, err, reason);
}

/* Applies a rebalance the way the group's protocol wants it. */
static void fh_kafka_consumer__rebalance_apply(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                                rd_kafka_topic_partition_list_t *parts) {
  int coop = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
  rd_kafka_error_t *e = NULL;
  rd_kafka_resp_err_t r = RD_KAFKA_RESP_ERR_NO_ERROR;
  if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
    if (coop) e = rd_kafka_incremental_assign(rk, parts);
    else r = rd_kafka_assign(rk, parts);
  } else {
    if (coop) e = rd_kafka_incremental_unassign(rk, parts);
    else r = rd_kafka_assign(rk, NULL);
  }
  if (e) {
    fh_log(FH_LOG_ERROR, "kafka %s: rebalance: %s", rd_kafka_name(rk), rd_kafka_error_string(e));
    rd_kafka_error_destroy(e);
  } else if (r) {
    fh_log(FH_LOG_ERROR, "kafka %s: rebalance: %s", rd_kafka_name(rk), rd_kafka_err2str(r));
  }
}

static void fh_kafka_consumer__rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                             rd_kafka_topic_partition_list_t *parts, void *opaque) {
  fh_kafka_consumer__t *c = opaque;
  fh_log(FH_LOG_INFO, "kafka %s: %s %d partitions", rd_kafka_name(rk),
         err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS ? "assigned" : "revoked", parts ? parts->cnt : 0);
  if (err != RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
    if (parts) fh_kafka_consumer__buf_drop(c, parts);
    /* Offsets stored by a commit whose request failed are still ours to
     * commit: do it before the partitions go (async; the group still
     * accepts it until the rebalance completes).  Not if the assignment was
     * lost: then another member may own them already. */
    if (!rd_kafka_assignment_lost(rk)) rd_kafka_commit(rk, NULL, 1);
  }
  fh_kafka_consumer__rebalance_apply(rk, err, parts);
}

/* Commit results arrive as events on c->cq, a queue of their own: served on
 * every wake-up even while the message buffer is full.  (On the consumer
 * queue they would wait behind messages nobody takes until the commit
 * returns: a deadlock whenever a backlog fills the buffer.) */
static void fh_kafka_consumer__serve_commits(fh_kafka_consumer__t *c) {
  rd_kafka_event_t *ev;
  while (c->cq && (ev = rd_kafka_queue_poll(c->cq, 0))) {
    if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_OFFSET_COMMIT) {
      fh_kafka_consumer__commit *r = rd_kafka_event_opaque(ev);
      rd_kafka_resp_err_t err = rd_kafka_event_error(ev);
      const rd_kafka_topic_partition_list_t *offsets = rd_kafka_event_topic_partition_list(ev);
      for (int i = 0; !err && offsets && i < offsets->cnt; i++) err = offsets->elems[i].err;
      if (r) {
        r->err = err;
        r->done = 1;
      }
    }
    rd_kafka_event_destroy(ev);
  }
}

static void fh_kafka_consumer__commit_queue_close(fh_kafka_consumer__t *c) {
  if (!c->cq) return;
  rd_kafka_queue_io_event_enable(c->cq, -1, NULL, 0);
  rd_kafka_queue_destroy(c->cq);
  c->cq = NULL;
}

/* ---- serving the queue -------------------------------------------------------- */

/* Pushes the error noted since the last answer (nil, text, kind) and forgets it. */
static int fh_kafka_consumer__push_noted(lua_State *L, fh_kafka_consumer__t *c) {
  int n = fh_push_fail(L, fh_kafka_kind(c->err_code), "%s", c->err);
  c->err[0] = 0;
  c->err_code = RD_KAFKA_RESP_ERR_NO_ERROR;
  return n;
}

/* Resumes finished commits and waiting polls.  Runs outside of librdkafka;
 * resumed code may poll, commit or close: c stays allocated until release,
 * and every step re-reads the lists. */
static void fh_kafka_consumer__serve(fh_kafka_consumer__t *c) {
  for (;;) {
    fh_kafka_consumer__commit **pp = &c->commits;
    while (*pp && !(*pp)->done) pp = &(*pp)->next;
    if (!*pp) break;
    fh_kafka_consumer__commit *r = *pp;
    *pp = r->next;
    lua_State *co = r->co;
    rd_kafka_resp_err_t err = r->err;
    free(r);
    if (!co) continue;
    if (err) {
      fh_wait_resume(co, fh_push_fail(co, fh_kafka_kind(err), "%s", rd_kafka_err2str(err)));
    } else {
      lua_pushboolean(co, 1);
      fh_wait_resume(co, 1);
    }
  }
  fh_wait *w;
  while ((w = fh_waitq_head(&c->poll_waits)) && c->len > 0 && c->kc.state == FH_KAFKA_OPEN) {
    int max = fh_wait_arg(w);
    lua_State *co = fh_wait_take(w);
    fh_kafka_consumer__push_messages(co, c, max);
    fh_wait_resume(co, 1);
  }
}

static void fh_kafka_consumer__poll_queue(fh_kafka_client *kc) {
  fh_kafka_consumer__t *c = (fh_kafka_consumer__t *)kc;
  if (kc->state != FH_KAFKA_OPEN) return;
  fh_kafka_consumer__serve_commits(c);
  while (c->len < c->max_buffered) {
    rd_kafka_message_t *m = rd_kafka_consumer_poll(kc->rk, 0);
    if (!m) break;
    if (m->err) {
      char what[400];
      if (m->rkt)
        snprintf(what, sizeof what, "%s [%s/%d]", rd_kafka_message_errstr(m),
                 rd_kafka_topic_name(m->rkt), (int)m->partition);
      else
        snprintf(what, sizeof what, "%s", rd_kafka_message_errstr(m));
      fh_kafka_consumer__note_error(c, m->err, what);
      rd_kafka_message_destroy(m);
      continue;
    }
    fh_kafka_consumer__buf_push(c, m);
  }
  fh_kafka_consumer__serve(c);
}

/* A poll() ends early: its deadline (an empty answer, or the error noted
 * meanwhile, after one last look at the queue), or the consumer closes. */
static int fh_kafka_consumer__poll_cut(fh_wait *w, lua_State *co, int why) {
  fh_kafka_consumer__t *c = fh_wait_data(w);
  if (!co) return 0;
  if (why != FH_WAIT_TIMEOUT) return fh_wait_push_reason(co, why);
  fh_kafka_consumer__poll_queue(&c->kc);
  if (c->len > 0 && c->kc.state == FH_KAFKA_OPEN) {
    fh_kafka_consumer__push_messages(co, c, fh_wait_arg(w));
    return 1;
  }
  if (c->err[0]) return fh_kafka_consumer__push_noted(co, c);
  lua_newtable(co);
  return 1;
}

/* Answers every waiter with nil, "closed" (resume) or forgets them (the Lua
 * state is closing), and drops the buffer. */
static void fh_kafka_consumer__give_up(fh_kafka_consumer__t *c, int resume) {
  fh_waitq_cancel(&c->poll_waits, resume ? FH_WAIT_CLOSED : FH_WAIT_GONE);
  for (fh_kafka_consumer__commit *r = c->commits; r; r = r->next) {
    /* The struct stays until release: librdkafka still holds it as opaque. */
    lua_State *co = r->co;
    r->co = NULL;
    if (resume && co) fh_wait_resume(co, fh_push_fail(co, FH_KIND_CLOSED, "closed"));
  }
  fh_kafka_consumer__buf_clear(c);
}

/* Threadpool: leave the group, bounded.  Events are served here with the
 * event API, so none of our callbacks runs on this thread. */
static void fh_kafka_consumer__close_thread(fh_kafka_client *kc) {
  fh_kafka_consumer__t *c = (fh_kafka_consumer__t *)kc;
  rd_kafka_t *rk = kc->rk;
  rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
  rd_kafka_error_t *e = rd_kafka_consumer_close_queue(rk, q);
  if (e) {
    fh_log(FH_LOG_WARN, "kafka %s: close: %s", rd_kafka_name(rk), rd_kafka_error_string(e));
    rd_kafka_error_destroy(e);
  } else {
    uint64_t deadline = uv_hrtime() + (uint64_t)c->close_timeout_ms * 1000000u;
    while (!rd_kafka_consumer_closed(rk)) {
      if (uv_hrtime() >= deadline) {
        fh_log(FH_LOG_WARN, "kafka %s: leaving the group took longer than %d ms; destroying anyway",
               rd_kafka_name(rk), c->close_timeout_ms);
        break;
      }
      rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 100);
      if (!ev) continue;
      switch (rd_kafka_event_type(ev)) {
        case RD_KAFKA_EVENT_REBALANCE:
          fh_kafka_consumer__rebalance_apply(rk, rd_kafka_event_error(ev), rd_kafka_event_topic_partition_list(ev));
          break;
        case RD_KAFKA_EVENT_LOG: {
          const char *fac, *str;
          int level;
          if (rd_kafka_event_log(ev, &fac, &str, &level) == 0) fh_kafka_log_cb(rk, level, fac, str);
          break;
        }
        case RD_KAFKA_EVENT_ERROR:
          fh_log(FH_LOG_WARN, "kafka %s: close: %s", rd_kafka_name(rk), rd_kafka_event_error_string(ev));
          break;
        default:
          break;
      }
      rd_kafka_event_destroy(ev);
    }
  }
  rd_kafka_queue_destroy(q);
}

static void fh_kafka_consumer__release(fh_kafka_client *kc) {
  fh_kafka_consumer__t *c = (fh_kafka_consumer__t *)kc;
  while (c->commits) {
    fh_kafka_consumer__commit *r = c->commits;
    c->commits = r->next;
    free(r);
  }
  fh_kafka_consumer__buf_clear(c);
  free(c->buf);
  if (c->box) *c->box = NULL;
  lua_State *co = c->closer;
  free(c);
  if (co) {
    lua_pushboolean(co, 1);
    fh_wait_resume(co, 1);
  }
}

/* ---- Lua ---------------------------------------------------------------------- */

static fh_kafka_consumer__t *fh_kafka_consumer__check_open(lua_State *L, int idx) {
  fh_kafka_consumer__t **box = luaL_checkudata(L, idx, FH__CONSUMER);
  if (!*box || (*box)->kc.state != FH_KAFKA_OPEN) luaL_error(L, "kafka consumer is closed");
  return *box;
}

/* consumer(conf, topics, opts) -> c | nil, err.  conf: librdkafka
 * properties, group.id among them; topics: array of names; opts:
 * { max_buffered, close_timeout_ms }. */
static int l_kafka_consumer_consumer(lua_State *L) {
  luaL_checktype(L, 2, LUA_TTABLE);
  int ntopics = (int)lua_objlen(L, 2);
  luaL_argcheck(L, ntopics > 0, 2, "at least one topic");
  for (int i = 1; i <= ntopics; i++) {
    lua_rawgeti(L, 2, i);
    if (lua_type(L, -1) != LUA_TSTRING) luaL_argerror(L, 2, "topics must be strings");
    lua_pop(L, 1);
  }
  lua_Integer max_buffered = fh_kafka_opt_int(L, 3, "max_buffered", 2000);
  lua_Integer close_ms = fh_kafka_opt_int(L, 3, "close_timeout_ms", 10000);
  luaL_argcheck(L, max_buffered >= 1, 3, "max_buffered must be >= 1");
  rd_kafka_conf_t *conf = fh_kafka_conf(L, 1, NULL);
  fh_kafka_consumer__t **box = lua_newuserdata(L, sizeof *box);
  *box = NULL;
  luaL_getmetatable(L, FH__CONSUMER);
  lua_setmetatable(L, -2);
  fh_kafka_consumer__t *c = calloc(1, sizeof *c);
  if (!c) {
    rd_kafka_conf_destroy(conf);
    return luaL_error(L, "out of memory");
  }
  c->max_buffered = (size_t)max_buffered;
  c->close_timeout_ms = close_ms < 0 ? 0 : (int)close_ms;
  rd_kafka_conf_set_opaque(conf, c);
  rd_kafka_conf_set_rebalance_cb(conf, fh_kafka_consumer__rebalance_cb);
  rd_kafka_conf_set_error_cb(conf, fh_kafka_consumer__error_cb);
  char errstr[512];
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
  if (!rk) {
    rd_kafka_conf_destroy(conf);
    free(c);
    return luaL_error(L, "kafka consumer: %s", errstr);
  }
  c->kc.rk = rk;
  c->kc.poll_queue = fh_kafka_consumer__poll_queue;
  c->kc.release = fh_kafka_consumer__release;
  c->kc.before_destroy = fh_kafka_consumer__close_thread;
  /* We close the consumer ourselves, bounded, before destroying it. */
  c->kc.destroy_flags = RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE;
  rd_kafka_poll_set_consumer(rk);
  rd_kafka_set_log_queue(rk, NULL); /* main queue, now forwarded to the consumer queue */
  rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(ntopics);
  for (int i = 1; i <= ntopics; i++) {
    lua_rawgeti(L, 2, i);
    rd_kafka_topic_partition_list_add(topics, lua_tostring(L, -1), RD_KAFKA_PARTITION_UA);
    lua_pop(L, 1);
  }
  rd_kafka_resp_err_t err = rd_kafka_subscribe(rk, topics);
  rd_kafka_topic_partition_list_destroy(topics);
  rd_kafka_queue_t *q = rd_kafka_queue_get_consumer(rk);
  int rc = err ? 0 : fh_kafka_client_start(&c->kc, q, FH__TICK_MS);
  if (!err && rc == 0) {
    /* same eventfd as the consumer queue: one wake-up serves both */
    static const uint64_t one = 1;
    c->cq = rd_kafka_queue_new(rk);
    rd_kafka_queue_io_event_enable(c->cq, c->kc.efd, &one, sizeof one);
  }
  if (err || rc) {
    rd_kafka_queue_destroy(q);
    rd_kafka_destroy_flags(rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    free(c);
    if (err) return fh_push_fail(L, fh_kafka_kind(err), "kafka subscribe: %s", rd_kafka_err2str(err));
    return fh_push_fail(L, FH_KIND_BUSY, "kafka consumer: %s", uv_strerror(rc));
  }
  *box = c;
  c->box = box;
  return 1;
}

/* c:poll(max, timeout_ms) -> { msg, ... } | nil, err
 * Yields until at least one message is there or the timeout; an empty
 * array on a quiet timeout, nil, err if librdkafka reported an error
 * meanwhile and no message came. */
static int l_kafka_consumer_poll(lua_State *L) {
  fh_kafka_consumer__t *c = fh_kafka_consumer__check_open(L, 1);
  lua_Integer max = luaL_optinteger(L, 2, 100);
  int ms = fh_kafka_check_ms(L, 3, 1000);
  luaL_argcheck(L, max >= 1 && max <= INT32_MAX, 2, "max must be >= 1");
  fh_kafka_consumer__poll_queue(&c->kc);
  /* A fatal error (fenced by another consumer with our group.instance.id,
   * say) ends this handle for good: every poll answers it, not only the one
   * that happened to follow it, so the caller can replace the handle.  Its
   * buffered messages can no longer be committed; the group gives them to
   * the next owner again. */
  char why[512];
  if (rd_kafka_fatal_error(c->kc.rk, why, sizeof why) != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return fh_push_fail(L, fh_kafka_kind(RD_KAFKA_RESP_ERR__FATAL), "%s",
                        fh_kafka_errstr(c->kc.rk, RD_KAFKA_RESP_ERR__FATAL, why, sizeof why));
  }
  if (c->len > 0 && !fh_waitq_head(&c->poll_waits)) {
    fh_kafka_consumer__push_messages(L, c, (int)max);
    return 1;
  }
  if (ms == 0) {
    if (c->err[0]) return fh_kafka_consumer__push_noted(L, c);
    lua_newtable(L);
    return 1;
  }
  /* through a generation stop: ms bounds it */
  fh_wait *w = fh_wait_start(L, ms, 1, &c->poll_waits, fh_kafka_consumer__poll_cut, c);
  fh_wait_set_arg(w, (int)max);
  return lua_yield(L, 0);
}

/* c:commit({ {topic, partition, next_offset}, ... }) -> true | nil, err
 * Yields until the group coordinator answered.  Partitions this consumer
 * no longer owns are left out: their new owner reads them again from the
 * last committed offset (at-least-once). */
static int l_kafka_consumer_commit(lua_State *L) {
  fh_kafka_consumer__t *c = fh_kafka_consumer__check_open(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  int n = (int)lua_objlen(L, 2);
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, 2, i);
    int ok = lua_istable(L, -1);
    if (ok) {
      lua_rawgeti(L, -1, 1);
      lua_rawgeti(L, -2, 2);
      lua_rawgeti(L, -3, 3);
      /* offsets are doubles in Lua: keep the conversion to int64 defined */
      ok = lua_type(L, -3) == LUA_TSTRING && lua_type(L, -2) == LUA_TNUMBER && lua_type(L, -1) == LUA_TNUMBER &&
           lua_tonumber(L, -1) >= 0 && lua_tonumber(L, -1) < 9e18 &&
           lua_tonumber(L, -2) >= 0 && lua_tonumber(L, -2) <= INT32_MAX;
      lua_pop(L, 3);
    }
    lua_pop(L, 1);
    if (!ok) return luaL_argerror(L, 2, "expected { {topic, partition, offset}, ... }");
  }
  if (n == 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_State *co = fh_wait_begin(L);
  rd_kafka_topic_partition_list_t *offs = rd_kafka_topic_partition_list_new(n);
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, 2, i);
    lua_rawgeti(L, -1, 1);
    lua_rawgeti(L, -2, 2);
    lua_rawgeti(L, -3, 3);
    rd_kafka_topic_partition_t *tp =
        rd_kafka_topic_partition_list_add(offs, lua_tostring(L, -3), (int32_t)lua_tointeger(L, -2));
    tp->offset = (int64_t)lua_tonumber(L, -1);
    lua_pop(L, 4);
  }
  rd_kafka_offsets_store(c->kc.rk, offs); /* per-partition errors below */
  rd_kafka_topic_partition_list_t *mine = rd_kafka_topic_partition_list_new(n);
  for (int i = 0; i < offs->cnt; i++) {
    if (offs->elems[i].err) {
      fh_log(FH_LOG_DEBUG, "kafka %s: not committing %s/%d: %s", rd_kafka_name(c->kc.rk),
             offs->elems[i].topic, (int)offs->elems[i].partition, rd_kafka_err2str(offs->elems[i].err));
      continue;
    }
    rd_kafka_topic_partition_list_add(mine, offs->elems[i].topic, offs->elems[i].partition)->offset =
        offs->elems[i].offset;
  }
  rd_kafka_topic_partition_list_destroy(offs);
  if (mine->cnt == 0) {
    rd_kafka_topic_partition_list_destroy(mine);
    lua_pushboolean(L, 1);
    return 1;
  }
  fh_kafka_consumer__commit *r = calloc(1, sizeof *r);
  if (!r) {
    rd_kafka_topic_partition_list_destroy(mine);
    return luaL_error(L, "out of memory");
  }
  rd_kafka_resp_err_t err = rd_kafka_commit_queue(c->kc.rk, mine, c->cq, NULL, r);
  rd_kafka_topic_partition_list_destroy(mine);
  if (err) {
    free(r);
    return fh_push_fail(L, fh_kafka_kind(err), "%s", rd_kafka_err2str(err));
  }
  r->co = co;
  r->next = c->commits;
  c->commits = r;
  return lua_yield(L, 0);
}

/* c:assignment() -> { {topic = , partition = }, ... } */
static int l_kafka_consumer_assignment(lua_State *L) {
  fh_kafka_consumer__t *c = fh_kafka_consumer__check_open(L, 1);
  rd_kafka_topic_partition_list_t *parts = NULL;
  rd_kafka_resp_err_t err = rd_kafka_assignment(c->kc.rk, &parts);
  if (err) return fh_push_fail(L, fh_kafka_kind(err), "%s", rd_kafka_err2str(err));
  lua_createtable(L, parts->cnt, 0);
  for (int i = 0; i < parts->cnt; i++) {
    lua_createtable(L, 0, 2);
    lua_pushstring(L, parts->elems[i].topic);
    lua_setfield(L, -2, "topic");
    lua_pushinteger(L, parts->elems[i].partition);
    lua_setfield(L, -2, "partition");
    lua_rawseti(L, -2, i + 1);
  }
  rd_kafka_topic_partition_list_destroy(parts);
  return 1;
}

/* c:lag() -> { [topic] = messages } : for each assigned partition, the high
 * watermark librdkafka last saw (updated by every fetch; no broker call) minus
 * the position handed to us, plus what waits in our own buffer.  Partitions
 * with no position yet count from their low watermark. */
static int l_kafka_consumer_lag(lua_State *L) {
  fh_kafka_consumer__t *c = fh_kafka_consumer__check_open(L, 1);
  rd_kafka_topic_partition_list_t *parts = NULL;
  rd_kafka_resp_err_t err = rd_kafka_assignment(c->kc.rk, &parts);
  if (err) return fh_push_fail(L, fh_kafka_kind(err), "%s", rd_kafka_err2str(err));
  rd_kafka_position(c->kc.rk, parts);
  lua_newtable(L);
  for (int i = 0; i < parts->cnt; i++) {
    rd_kafka_topic_partition_t *p = &parts->elems[i];
    int64_t lo = 0, hi = 0;
    if (rd_kafka_get_watermark_offsets(c->kc.rk, p->topic, p->partition, &lo, &hi) != 0 || hi < 0) continue;
    int64_t pos = p->offset >= 0 ? p->offset : lo;
    int64_t behind = hi > pos ? hi - pos : 0;
    lua_getfield(L, -1, p->topic);
    lua_Number sum = lua_tonumber(L, -1) + (lua_Number)behind;
    lua_pop(L, 1);
    lua_pushnumber(L, sum);
    lua_setfield(L, -2, p->topic);
  }
  rd_kafka_topic_partition_list_destroy(parts);
  /* messages fetched but not yet polled by the app are behind too */
  for (size_t i = 0; i < c->len; i++) {
    rd_kafka_message_t *m = c->buf[c->head + i];
    const char *t = rd_kafka_topic_name(m->rkt);
    lua_getfield(L, -1, t);
    lua_Number sum = lua_tonumber(L, -1) + 1;
    lua_pop(L, 1);
    lua_pushnumber(L, sum);
    lua_setfield(L, -2, t);
  }
  return 1;
}

/* c:close() -> true.  Waiting polls and commits answer nil, "closed";
 * yields until the consumer left its group and was destroyed. */
static int l_kafka_consumer_close(lua_State *L) {
  fh_kafka_consumer__t **box = luaL_checkudata(L, 1, FH__CONSUMER);
  fh_kafka_consumer__t *c = *box;
  if (!c || c->kc.state != FH_KAFKA_OPEN) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_State *co = fh_wait_begin(L);
  fh_kafka_consumer__give_up(c, 1);
  c->closer = co;
  fh_kafka_consumer__commit_queue_close(c);
  fh_kafka_client_teardown(&c->kc);
  return lua_yield(L, 0);
}

static int l_kafka_consumer_gc(lua_State *L) {
  fh_kafka_consumer__t **box = luaL_checkudata(L, 1, FH__CONSUMER);
  fh_kafka_consumer__t *c = *box;
  if (!c) return 0;
  *box = NULL;
  c->box = NULL;
  if (c->kc.state != FH_KAFKA_OPEN) {
    c->closer = NULL; /* a close() whose coroutine is gone with the state */
    return 0;
  }
  fh_kafka_consumer__give_up(c, 0);
  fh_kafka_consumer__commit_queue_close(c);
  fh_kafka_client_teardown(&c->kc);
  return 0;
}

static int l_kafka_consumer_tostring(lua_State *L) {
  fh_kafka_consumer__t **box = luaL_checkudata(L, 1, FH__CONSUMER);
  if (*box) lua_pushfstring(L, "kafka consumer (%s)", rd_kafka_name((*box)->kc.rk));
  else lua_pushliteral(L, "kafka consumer (closed)");
  return 1;
}

void fh_kafka_consumer_open(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"poll", l_kafka_consumer_poll}, {"commit", l_kafka_consumer_commit}, {"assignment", l_kafka_consumer_assignment}, {"lag", l_kafka_consumer_lag}, {"close", l_kafka_consumer_close},
    {"__gc", l_kafka_consumer_gc}, {"__tostring", l_kafka_consumer_tostring}, {NULL, NULL}};
  fh_new_class(L, FH__CONSUMER, methods);
  lua_pushcfunction(L, l_kafka_consumer_consumer);
  lua_setfield(L, -2, "consumer");
}

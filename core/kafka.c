/*
 * flashhost.kafka.driver: the mechanics of Kafka clients on librdkafka 2.0.2.
 * Options, defaults and the friendly API live in the facade,
 * core/lua/flashhost/kafka.lua.
 *
 * This file holds what every handle shares (see kafka_int.h): building a
 * configuration, watching a queue from the loop, the log callback, and the
 * teardown that hands rd_kafka_destroy to the threadpool.  The producer, the
 * consumer and the admin calls live in kafka_producer.c, kafka_consumer.c
 * and kafka_admin.c.
 */
#include "kafka_int.h"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>

/* ---- configuration ----------------------------------------------------- */

rd_kafka_conf_t *fh_kafka_conf(lua_State *L, int idx, void *opaque) {
  luaL_checktype(L, idx, LUA_TTABLE);
  idx = idx < 0 ? lua_gettop(L) + idx + 1 : idx;
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  char err[512] = "";
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    /* lua_tostring on a number key would confuse lua_next: check types first. */
    if (lua_type(L, -2) != LUA_TSTRING) {
      snprintf(err, sizeof err, "kafka config: keys must be strings");
    } else if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER) {
      snprintf(err, sizeof err, "kafka config %s: value must be a string or a number", lua_tostring(L, -2));
    } else {
      const char *k = lua_tostring(L, -2);
      lua_pushvalue(L, -1); /* converting a number in place is fine on a copy */
      const char *v = lua_tostring(L, -1);
      char why[256];
      if (rd_kafka_conf_set(conf, k, v, why, sizeof why) != RD_KAFKA_CONF_OK)
        snprintf(err, sizeof err, "kafka config %s=%s: %s", k, v, why);
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
    if (err[0]) {
      lua_pop(L, 1); /* the key */
      rd_kafka_conf_destroy(conf);
      luaL_error(L, "%s", err);
    }
  }
  /* Log lines must come through a polled queue, never from librdkafka's
   * own threads (the caller routes them with rd_kafka_set_log_queue). */
  char why[256];
  if (rd_kafka_conf_set(conf, "log.queue", "true", why, sizeof why) != RD_KAFKA_CONF_OK) {
    rd_kafka_conf_destroy(conf);
    luaL_error(L, "kafka config log.queue: %s", why);
  }
  rd_kafka_conf_set_log_cb(conf, fh_kafka_log_cb);
  rd_kafka_conf_set_opaque(conf, opaque);
  return conf;
}

int fh_kafka_check_ms(lua_State *L, int idx, int dflt) {
  lua_Number ms = luaL_optnumber(L, idx, dflt);
  luaL_argcheck(L, ms >= 0, idx, "timeout must be >= 0 ms"); /* NaN fails too */
  return ms > INT32_MAX ? INT32_MAX : (int)ms;
}

lua_Integer fh_kafka_opt_int(lua_State *L, int idx, const char *name, lua_Integer dflt) {
  if (lua_isnoneornil(L, idx)) return dflt;
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_getfield(L, idx, name);
  lua_Integer v = lua_isnil(L, -1) ? dflt : lua_tointeger(L, -1);
  if (!lua_isnil(L, -1) && !lua_isnumber(L, -1)) {
    lua_pop(L, 1);
    luaL_error(L, "option %s must be a number", name);
  }
  lua_pop(L, 1);
  return v;
}

/* ---- logs and errors --------------------------------------------------- */

void fh_kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
  /* syslog levels: 0..3 error, 4 warning, 5..6 notice/info, 7 debug */
  int lv = level <= 3 ? FH_LOG_ERROR : level == 4 ? FH_LOG_WARN : level <= 6 ? FH_LOG_INFO : FH_LOG_DEBUG;
  fh_log(lv, "kafka %s [%s] %s", rk ? rd_kafka_name(rk) : "-", fac, buf);
}

const char *fh_kafka_errstr(rd_kafka_t *rk, rd_kafka_resp_err_t err, char *buf, size_t size) {
  if (err == RD_KAFKA_RESP_ERR__FATAL && rk) {
    char why[256];
    rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, why, sizeof why);
    if (orig) {
      snprintf(buf, size, "%s: %s", rd_kafka_err2str(orig), why);
      return buf;
    }
  }
  snprintf(buf, size, "%s", rd_kafka_err2str(err));
  return buf;
}

const char *fh_kafka_kind(rd_kafka_resp_err_t err) {
  switch (err) {
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TIMED_OUT_QUEUE:
    case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
      return FH_KIND_TIMEOUT;
    case RD_KAFKA_RESP_ERR__QUEUE_FULL:
      return FH_KIND_BUSY;
    case RD_KAFKA_RESP_ERR__DESTROY:
    case RD_KAFKA_RESP_ERR__PURGE_QUEUE:
    case RD_KAFKA_RESP_ERR__PURGE_INFLIGHT:
      return FH_KIND_CLOSED;
    case RD_KAFKA_RESP_ERR__TRANSPORT:
    case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
      return FH_KIND_NOT_CONNECTED;
    default:
      /* librdkafka's own name: "UNKNOWN_TOPIC_OR_PART", "_FATAL", ... */
      return rd_kafka_err2name(err);
  }
}

/* ---- watching a queue from the loop ------------------------------------ */

static void fh_kafka__on_poll(uv_poll_t *h, int status, int events) {
  fh_kafka_client *kc = h->data;
  uint64_t n;
  /* The eventfd counter is reset by one read; loop until EAGAIN anyway, so
   * a wake-up is never left pending in the fd. */
  while (read(kc->efd, &n, sizeof n) == (ssize_t)sizeof n) {}
  if (status < 0) fh_log(FH_LOG_WARN, "kafka %s: poll: %s", rd_kafka_name(kc->rk), uv_strerror(status));
  if (kc->state == FH_KAFKA_OPEN) kc->poll_queue(kc);
}

/* The tick covers what no io event announces: max.poll.interval.ms counts
 * from the consumer's last poll, and an idle consumer woken only by events
 * would be thrown out of its group. */
static void fh_kafka__on_tick(uv_timer_t *t) {
  fh_kafka_client *kc = t->data;
  if (kc->state == FH_KAFKA_OPEN) kc->poll_queue(kc);
}

int fh_kafka_client_start(fh_kafka_client *kc, rd_kafka_queue_t *q, unsigned tick_ms) {
  static const uint64_t one = 1; /* an eventfd write must be 8 bytes, non-zero */
  kc->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (kc->efd < 0) return -errno;
  int rc = uv_poll_init(fh_loop(), &kc->poll, kc->efd);
  if (rc != 0) {
    close(kc->efd);
    kc->efd = -1;
    return rc;
  }
  uv_timer_init(fh_loop(), &kc->tick);
  kc->poll.data = kc;
  kc->tick.data = kc;
  kc->q = q;
  kc->state = FH_KAFKA_OPEN;
  rd_kafka_queue_io_event_enable(q, kc->efd, &one, sizeof one);
  uv_poll_start(&kc->poll, UV_READABLE, fh_kafka__on_poll);
  if (tick_ms) uv_timer_start(&kc->tick, fh_kafka__on_tick, tick_ms, tick_ms);
  /* Edge triggered: what arrived before the io event was enabled would
   * otherwise wait for the next event. */
  kc->poll_queue(kc);
  return 0;
}

/* ---- teardown ------------------------------------------------------------ */

static void fh_kafka__unref(fh_kafka_client *kc) {
  if (--kc->refs == 0) kc->release(kc);
}

static void fh_kafka__handle_closed(uv_handle_t *h) { fh_kafka__unref(h->data); }

static void fh_kafka__destroy_work(uv_work_t *w) {
  fh_kafka_client *kc = w->data;
  if (kc->before_destroy) kc->before_destroy(kc);
  rd_kafka_destroy_flags(kc->rk, kc->destroy_flags);
  kc->rk = NULL;
}

static void fh_kafka__destroy_done(uv_work_t *w, int status) {
  fh_kafka_client *kc = w->data;
  /* librdkafka no longer writes to the fd: the handle is gone. */
  close(kc->efd);
  kc->efd = -1;
  fh_kafka__unref(kc);
}

void fh_kafka_client_teardown(fh_kafka_client *kc) {
  kc->state = FH_KAFKA_CLOSING;
  /* Order matters (librdkafka's rules for io events): the io event off and
   * our queue reference gone before librdkafka closes or destroys anything. */
  rd_kafka_queue_io_event_enable(kc->q, -1, NULL, 0);
  rd_kafka_queue_destroy(kc->q);
  kc->q = NULL;
  kc->refs = 3;
  uv_poll_stop(&kc->poll);
  uv_close((uv_handle_t *)&kc->poll, fh_kafka__handle_closed);
  uv_timer_stop(&kc->tick);
  uv_close((uv_handle_t *)&kc->tick, fh_kafka__handle_closed);
  kc->work.data = kc;
  /* From here on the loop thread does not touch kc->rk: the worker thread
   * owns it until fh_kafka__destroy_done. */
  if (uv_queue_work(fh_loop(), &kc->work, fh_kafka__destroy_work, fh_kafka__destroy_done) != 0) {
    fh_kafka__destroy_work(&kc->work);
    fh_kafka__destroy_done(&kc->work, 0);
  }
}

/* ---- module ---------------------------------------------------------------- */

static int l_kafka_version(lua_State *L) {
  lua_pushstring(L, rd_kafka_version_str());
  return 1;
}

int luaopen_flashhost_kafka_driver(lua_State *L) {
  lua_newtable(L);
  lua_pushcfunction(L, l_kafka_version);
  lua_setfield(L, -2, "version");
  fh_kafka_producer_open(L);
  fh_kafka_consumer_open(L);
  fh_kafka_admin_open(L);
  return 1;
}

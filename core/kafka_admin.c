/*
 * flashhost.kafka.driver: one-shot admin calls, each on a handle of its own.
 *
 * create_topics runs rd_kafka_CreateTopics on a short-lived handle whose
 * main queue is watched like any other (kafka.c): the result event arrives
 * there, the handle is torn down, and the caller is resumed from `release`.
 *
 * metadata has no asynchronous form in librdkafka 2.0.2 (rd_kafka_metadata
 * blocks for up to its timeout), so the whole call — handle, request,
 * destroy — runs on a threadpool thread and only the copied answer comes
 * back to the loop.
 */
#include "kafka_int.h"
#include <stdlib.h>
#include <string.h>
#include <stdio.h>

#define FH__TICK_MS 1000

/* ---- create_topics ------------------------------------------------------------ */

typedef struct {
  char *name;
  char *code;   /* rd_kafka_err2name, NULL on success */
  char *msg;
} fh_kafka_admin__topic_res;

typedef struct {
  fh_kafka_client kc;       /* first: kafka.c hands us &op->kc */
  lua_State *co;
  int done;
  char err[512];            /* the request as a whole failed */
  rd_kafka_resp_err_t err_code;
  int n;
  fh_kafka_admin__topic_res *res;
} fh_kafka_admin__create_op;

static char *fh_kafka_admin__strdup(const char *s) { return s ? strdup(s) : NULL; }

static void fh_kafka_admin__create_result(fh_kafka_admin__create_op *op, rd_kafka_event_t *ev) {
  if (rd_kafka_event_error(ev)) {
    snprintf(op->err, sizeof op->err, "%s", rd_kafka_event_error_string(ev));
    op->err_code = rd_kafka_event_error(ev);
    return;
  }
  const rd_kafka_CreateTopics_result_t *res = rd_kafka_event_CreateTopics_result(ev);
  size_t cnt = 0;
  const rd_kafka_topic_result_t **topics = rd_kafka_CreateTopics_result_topics(res, &cnt);
  op->res = calloc(cnt ? cnt : 1, sizeof *op->res);
  if (!op->res) {
    snprintf(op->err, sizeof op->err, "out of memory");
    return;
  }
  op->n = (int)cnt;
  for (size_t i = 0; i < cnt; i++) {
    rd_kafka_resp_err_t err = rd_kafka_topic_result_error(topics[i]);
    op->res[i].name = fh_kafka_admin__strdup(rd_kafka_topic_result_name(topics[i]));
    if (err) {
      const char *msg = rd_kafka_topic_result_error_string(topics[i]);
      op->res[i].code = fh_kafka_admin__strdup(rd_kafka_err2name(err));
      op->res[i].msg = fh_kafka_admin__strdup(msg && *msg ? msg : rd_kafka_err2str(err));
    }
  }
}

static void fh_kafka_admin__create_poll_queue(fh_kafka_client *kc) {
  fh_kafka_admin__create_op *op = (fh_kafka_admin__create_op *)kc;
  if (kc->state != FH_KAFKA_OPEN) return;
  rd_kafka_event_t *ev;
  while ((ev = rd_kafka_queue_poll(kc->q, 0)) != NULL) {
    switch (rd_kafka_event_type(ev)) {
      case RD_KAFKA_EVENT_CREATETOPICS_RESULT:
        fh_kafka_admin__create_result(op, ev);
        op->done = 1;
        break;
      case RD_KAFKA_EVENT_LOG: {
        const char *fac, *str;
        int level;
        if (rd_kafka_event_log(ev, &fac, &str, &level) == 0) fh_kafka_log_cb(kc->rk, level, fac, str);
        break;
      }
      case RD_KAFKA_EVENT_ERROR:
        fh_log(FH_LOG_WARN, "kafka %s: %s", rd_kafka_name(kc->rk), rd_kafka_event_error_string(ev));
        break;
      default:
        break;
    }
    rd_kafka_event_destroy(ev);
  }
  if (op->done) fh_kafka_client_teardown(kc);
}

static void fh_kafka_admin__create_release(fh_kafka_client *kc) {
  fh_kafka_admin__create_op *op = (fh_kafka_admin__create_op *)kc;
  lua_State *co = op->co;
  if (co && op->err[0]) {
    fh_wait_resume(co, fh_push_fail(co, op->err_code ? fh_kafka_kind(op->err_code) : FH_KIND_CLOSED, "%s", op->err));
    co = NULL;
  } else if (co) {
    lua_createtable(co, op->n, 0);
    for (int i = 0; i < op->n; i++) {
      lua_createtable(co, 0, 3);
      lua_pushstring(co, op->res[i].name ? op->res[i].name : "?");
      lua_setfield(co, -2, "name");
      if (op->res[i].code) {
        lua_pushstring(co, op->res[i].code);
        lua_setfield(co, -2, "code");
        lua_pushstring(co, op->res[i].msg ? op->res[i].msg : op->res[i].code);
        lua_setfield(co, -2, "err");
      }
      lua_rawseti(co, -2, i + 1);
    }
  }
  for (int i = 0; i < op->n; i++) {
    free(op->res[i].name);
    free(op->res[i].code);
    free(op->res[i].msg);
  }
  free(op->res);
  free(op);
  if (co) fh_wait_resume(co, 1);
}

/* Checks the topic list; returns how many there are.  Raises on misuse. */
static int fh_kafka_admin__check_topics(lua_State *L, int idx) {
  luaL_checktype(L, idx, LUA_TTABLE);
  int n = (int)lua_objlen(L, idx);
  luaL_argcheck(L, n > 0, idx, "at least one topic");
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, idx, i);
    if (!lua_istable(L, -1)) luaL_argerror(L, idx, "topics must be tables");
    lua_getfield(L, -1, "name");
    lua_getfield(L, -2, "partitions");
    lua_getfield(L, -3, "replication");
    lua_getfield(L, -4, "config");
    if (lua_type(L, -4) != LUA_TSTRING) luaL_argerror(L, idx, "topic name must be a string");
    if (!lua_isnumber(L, -3) || lua_tointeger(L, -3) < 1) luaL_argerror(L, idx, "partitions must be >= 1");
    if (!lua_isnumber(L, -2) || lua_tointeger(L, -2) < 1) luaL_argerror(L, idx, "replication must be >= 1");
    if (!lua_isnil(L, -1) && !lua_istable(L, -1)) luaL_argerror(L, idx, "topic config must be a table");
    if (lua_istable(L, -1)) {
      lua_pushnil(L);
      while (lua_next(L, -2) != 0) {
        if (lua_type(L, -2) != LUA_TSTRING || (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER))
          luaL_argerror(L, idx, "topic config must map names to strings");
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 5);
  }
  return n;
}

/* Builds the NewTopic array for the (checked) list at idx; NULL and a
 * message in errbuf if librdkafka refuses one. */
static rd_kafka_NewTopic_t **fh_kafka_admin__new_topics(lua_State *L, int idx, int n, char *errbuf, size_t size) {
  rd_kafka_NewTopic_t **nts = calloc((size_t)n, sizeof *nts);
  if (!nts) { snprintf(errbuf, size, "out of memory"); return NULL; }
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, idx, i + 1);
    lua_getfield(L, -1, "name");
    lua_getfield(L, -2, "partitions");
    lua_getfield(L, -3, "replication");
    nts[i] = rd_kafka_NewTopic_new(lua_tostring(L, -3), (int)lua_tointeger(L, -2), (int)lua_tointeger(L, -1),
                                   errbuf, size);
    lua_pop(L, 3);
    if (nts[i]) {
      lua_getfield(L, -1, "config");
      if (lua_istable(L, -1)) {
        lua_pushnil(L);
        while (lua_next(L, -2) != 0) {
          lua_pushvalue(L, -1); /* numbers become text on the copy */
          rd_kafka_resp_err_t err = rd_kafka_NewTopic_set_config(nts[i], lua_tostring(L, -3), lua_tostring(L, -1));
          if (err) snprintf(errbuf, size, "topic config %s: %s", lua_tostring(L, -3), rd_kafka_err2str(err));
          lua_pop(L, 2);
          if (err) {
            lua_pop(L, 1); /* the key: the traversal ends here */
            rd_kafka_NewTopic_destroy(nts[i]);
            nts[i] = NULL;
            break;
          }
        }
      }
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
    if (!nts[i]) {
      rd_kafka_NewTopic_destroy_array(nts, (size_t)i);
      free(nts);
      return NULL;
    }
  }
  return nts;
}

/* create_topics(conf, { {name=, partitions=, replication=, config=}, ... },
 * timeout_ms) -> { {name=, code=?, err=?}, ... } | nil, err
 * Yields until the brokers answered (or timeout_ms passed: then nil, err). */
static int l_kafka_admin_create_topics(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  int n = fh_kafka_admin__check_topics(L, 2);
  int ms = fh_kafka_check_ms(L, 3, 15000);
  luaL_argcheck(L, ms > 0, 3, "timeout must be > 0");
  lua_State *co = fh_wait_begin(L);
  rd_kafka_conf_t *conf = fh_kafka_conf(L, 1, NULL); /* may raise: nothing allocated yet */
  char errbuf[512];
  rd_kafka_NewTopic_t **nts = fh_kafka_admin__new_topics(L, 2, n, errbuf, sizeof errbuf);
  if (!nts) {
    rd_kafka_conf_destroy(conf);
    return fh_push_fail(L, FH_KIND_REFUSED, "%s", errbuf);
  }
  fh_kafka_admin__create_op *op = calloc(1, sizeof *op);
  rd_kafka_t *rk = NULL;
  if (!op) snprintf(errbuf, sizeof errbuf, "out of memory");
  else rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errbuf, sizeof errbuf);
  if (!rk) {
    rd_kafka_conf_destroy(conf);
    rd_kafka_NewTopic_destroy_array(nts, (size_t)n);
    free(nts);
    free(op);
    return luaL_error(L, "kafka admin: %s", errbuf);
  }
  op->kc.rk = rk;
  op->kc.poll_queue = fh_kafka_admin__create_poll_queue;
  op->kc.release = fh_kafka_admin__create_release;
  rd_kafka_set_log_queue(rk, NULL);
  rd_kafka_queue_t *q = rd_kafka_queue_get_main(rk);
  int rc = fh_kafka_client_start(&op->kc, q, FH__TICK_MS);
  if (rc != 0) {
    rd_kafka_queue_destroy(q);
    rd_kafka_destroy(rk);
    rd_kafka_NewTopic_destroy_array(nts, (size_t)n);
    free(nts);
    free(op);
    return fh_push_fail(L, FH_KIND_BUSY, "kafka admin: %s", uv_strerror(rc));
  }
  rd_kafka_AdminOptions_t *opts = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
  rd_kafka_AdminOptions_set_request_timeout(opts, ms, errbuf, sizeof errbuf);
  /* How long the controller may take to finish creating them. */
  rd_kafka_AdminOptions_set_operation_timeout(opts, ms, errbuf, sizeof errbuf);
  rd_kafka_CreateTopics(rk, nts, (size_t)n, opts, op->kc.q);
  rd_kafka_AdminOptions_destroy(opts);
  rd_kafka_NewTopic_destroy_array(nts, (size_t)n);
  free(nts);
  op->co = co;
  return lua_yield(L, 0);
}

/* ---- metadata ------------------------------------------------------------------ */

typedef struct {
  uv_work_t work;
  rd_kafka_conf_t *conf;
  int timeout_ms;
  lua_State *co;
  char err[512];
  rd_kafka_resp_err_t err_code;
  int nbrokers, ntopics;
  char **names;
  int *partitions;
} fh_kafka_admin__meta_op;

/* Threadpool: the whole blocking call, on a handle of its own. */
static void fh_kafka_admin__meta_work(uv_work_t *w) {
  fh_kafka_admin__meta_op *op = w->data;
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, op->conf, op->err, sizeof op->err);
  if (!rk) {
    rd_kafka_conf_destroy(op->conf);
    op->conf = NULL;
    return;
  }
  op->conf = NULL;
  rd_kafka_set_log_queue(rk, NULL);
  const struct rd_kafka_metadata *md = NULL;
  rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 1, NULL, &md, op->timeout_ms);
  if (err) {
    snprintf(op->err, sizeof op->err, "%s", rd_kafka_err2str(err));
    op->err_code = err;
  } else {
    op->nbrokers = md->broker_cnt;
    op->names = calloc((size_t)md->topic_cnt + 1, sizeof *op->names);
    op->partitions = calloc((size_t)md->topic_cnt + 1, sizeof *op->partitions);
    if (!op->names || !op->partitions) {
      snprintf(op->err, sizeof op->err, "out of memory");
    } else {
      for (int i = 0; i < md->topic_cnt; i++) {
        if (md->topics[i].err) continue; /* listed but unusable: leave it out */
        op->names[op->ntopics] = strdup(md->topics[i].topic);
        op->partitions[op->ntopics++] = md->topics[i].partition_cnt;
      }
    }
    rd_kafka_metadata_destroy(md);
  }
  /* Serve the log lines of this short life (on this thread: logging only). */
  while (rd_kafka_poll(rk, 0) > 0) {}
  rd_kafka_destroy(rk);
}

static void fh_kafka_admin__meta_done(uv_work_t *w, int status) {
  fh_kafka_admin__meta_op *op = w->data;
  lua_State *co = op->co;
  int nres;
  if (op->err[0]) {
    nres = fh_push_fail(co, op->err_code ? fh_kafka_kind(op->err_code) : FH_KIND_REFUSED, "%s", op->err);
  } else {
    lua_createtable(co, 0, 2);
    lua_pushinteger(co, op->nbrokers);
    lua_setfield(co, -2, "brokers");
    lua_createtable(co, 0, op->ntopics);
    for (int i = 0; i < op->ntopics; i++) {
      if (!op->names[i]) continue;
      lua_pushinteger(co, op->partitions[i]);
      lua_setfield(co, -2, op->names[i]);
    }
    lua_setfield(co, -2, "topics");
    nres = 1;
  }
  for (int i = 0; i < op->ntopics; i++) free(op->names[i]);
  free(op->names);
  free(op->partitions);
  if (op->conf) rd_kafka_conf_destroy(op->conf);
  free(op);
  fh_wait_resume(co, nres);
}

/* metadata(conf, timeout_ms) -> { brokers = n, topics = { name = partitions } } | nil, err */
static int l_kafka_admin_metadata(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  int ms = fh_kafka_check_ms(L, 2, 5000);
  luaL_argcheck(L, ms > 0, 2, "timeout must be > 0");
  lua_State *co = fh_wait_begin(L);
  fh_kafka_admin__meta_op *op = calloc(1, sizeof *op);
  if (!op) return luaL_error(L, "out of memory");
  op->conf = fh_kafka_conf(L, 1, NULL);
  op->timeout_ms = ms;
  op->co = co;
  op->work.data = op;
  int rc = uv_queue_work(fh_loop(), &op->work, fh_kafka_admin__meta_work, fh_kafka_admin__meta_done);
  if (rc != 0) {
    rd_kafka_conf_destroy(op->conf);
    free(op);
    return fh_push_fail(L, FH_KIND_BUSY, "kafka metadata: %s", uv_strerror(rc));
  }
  return lua_yield(L, 0);
}

void fh_kafka_admin_open(lua_State *L) {
  lua_pushcfunction(L, l_kafka_admin_create_topics);
  lua_setfield(L, -2, "create_topics");
  lua_pushcfunction(L, l_kafka_admin_metadata);
  lua_setfield(L, -2, "metadata");
}

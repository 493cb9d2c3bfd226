/*
 * flashhost.redis.driver: the mechanics of a Redis client (hiredis 0.14.1
 * async, on the process loop through core/redis_uv.c).  Options, URLs and
 * scripts live in the facade, core/lua/flashhost/redis.lua.
 *
 * One client = one connection, shared by every coroutine of the generation:
 * a call appends the command to hiredis' output buffer and yields, so the
 * commands of all coroutines that ran in one loop iteration leave in one
 * write (pipelining) and the replies come back in order.
 *
 * What a call answers (three ways, as lua-resty-redis does, so a caller can
 * tell "Redis said no" from "Redis is not there"; DESIGN.md, error kinds):
 *   value                  a reply; a nil reply is `driver.null` (= cjson.null)
 *   false, "ERR ..", kind  an error reply; kind is its first word (ERR, WRONGTYPE)
 *   nil, reason, kind      the transport failed: "not connected" (not_connected),
 *                          "timeout" (timeout), "connection lost" and "closed"
 *                          (closed), "overloaded" (busy)
 *
 * hiredis 0.14 has no reconnect and no timeouts, so both are done here:
 *   - the client is `down` (waiting to retry), `connecting` (resolving,
 *     TCP connect, then [AUTH] [SELECT] PING) or `up`.  Only an `up` client
 *     sends commands; otherwise a call answers "not connected" at once.
 *   - conn_timer means "retry now" while down (exponential backoff with
 *     jitter) and "give up this attempt" while connecting.
 *   - every command has a deadline (timeout_ms after it was sent); as all
 *     commands of a client share timeout_ms, the waiting list is in deadline
 *     order and one timer armed for its head is enough.  A timed-out command
 *     stays in hiredis' queue (its reply will still come, in order) and is
 *     freed, unanswered, when that reply or the end of the connection comes.
 *     A run of timeouts with no reply in between means the connection is
 *     stuck: it is dropped and a new one is made.
 *
 * Lifetimes.  The userdata holds a pointer to the C struct.  __gc closes the
 * client; the struct is freed only when the userdata is gone, both timers
 * are closed, no hiredis context is left and every command struct came back
 * from hiredis (hiredis runs each reply callback exactly once: with a reply,
 * or with NULL when the context is freed).  A generation's lua_State may be
 * closed while a connect or a reconnect timer is in flight; after __gc
 * nothing here touches Lua again.
 *
 * Re-entrancy.  Reply callbacks resume coroutines; when no Lua code runs
 * below us (a libuv callback) the coroutine runs right inside hiredis'
 * callback and may call, close, or drop the client.  hiredis 0.14 allows
 * commands and redisAsyncFree inside a reply callback (it defers the free),
 * but not inside the connect callback, so the connect callback never runs
 * Lua, and every path that frees a context first detaches it from the client
 * (cl->ac = NULL, ac->data = NULL) so nothing frees it twice.
 */
#include "fh.h"
#include "redis_uv.h"
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <stdio.h>
#include <math.h>
#include <unistd.h>
#include <netdb.h>
#include <arpa/inet.h>

#define FH__CLASS "flashhost.redis.client"
#define FH__BACKOFF_MIN 50    /* ms, first retry after a loss */
#define FH__BACKOFF_MAX 2000  /* ms, retries while Redis stays away */
#define FH__STUCK_AFTER 3     /* timeouts in a row with no reply: drop the connection */
#define FH__ARGV_STACK 32

enum { FH__DOWN, FH__CONNECTING, FH__UP };
/* kinds of command: a task's; the handshake's; ASKING sent just before a task's command */
enum { FH__USER, FH__HELLO, FH__LAST_HELLO, FH__ASKING };

/* The nil-reply sentinel: the NULL light userdata, which is also cjson.null
 * and mysql.null, so one null runs through every binding and encodes as JSON
 * null (lua-resty-redis does the same with ngx.null). */
#define FH__NULL NULL

typedef struct fh_redis__client fh_redis__client;

typedef struct fh_redis__cmd {
  fh_redis__client *cl;
  lua_State *co;                 /* the waiting coroutine; NULL once answered */
  uint64_t deadline;             /* loop time, ms */
  int kind;
  struct fh_redis__cmd *prev, *next;  /* cl->head..tail while co != NULL */
} fh_redis__cmd;

typedef struct fh_redis__resolve {
  uv_getaddrinfo_t req;
  fh_redis__client *cl;               /* NULL: the client gave up on this lookup */
} fh_redis__resolve;

struct fh_redis__client {
  char *host, *password, *username;
  int port, db;
  uint64_t timeout_ms, connect_timeout_ms;
  int max_pending;

  int state, closed, has_ud;
  redisAsyncContext *ac;         /* the current context, NULL when down */
  fh_redis__resolve *resolving;
  const char *abort_reason;      /* set when the connect callback must give up */
  uv_timer_t conn_timer, cmd_timer;
  int handles;                   /* of the two timers, not closed yet */
  int cmds;                      /* command structs hiredis still holds */
  int inflight;                  /* user commands among them */
  fh_redis__cmd *head, *tail;         /* commands with a waiting coroutine */
  fh_waitq ready_waits;          /* tasks inside wait_ready */
  uint64_t backoff;
  int timeouts_in_row, warned;
  double connects, losses, timeouts;
  char last_err[160];
};

/* ---- small helpers ------------------------------------------------------- */

static void fh_redis__set_err(fh_redis__client *cl, const char *msg) {
  snprintf(cl->last_err, sizeof cl->last_err, "%s", msg && *msg ? msg : "unknown error");
}

static uint64_t fh_redis__jitter(uint64_t ms) {
  /* Equal jitter: workers that lost Redis together do not come back in step. */
  static uint64_t s;
  if (!s) s = (fh_mono_ns() ^ ((uint64_t)getpid() << 32)) | 1;
  s ^= s << 13; s ^= s >> 7; s ^= s << 17;
  return ms / 2 + s % (ms / 2 + 1);
}

static void fh_redis__unlink(fh_redis__client *cl, fh_redis__cmd *c) {
  if (c->prev) c->prev->next = c->next; else cl->head = c->next;
  if (c->next) c->next->prev = c->prev; else cl->tail = c->prev;
  c->prev = c->next = NULL;
}

static void fh_redis__maybe_free(fh_redis__client *cl) {
  if (!cl->closed || cl->has_ud || cl->handles || cl->cmds || cl->ac || cl->resolving) return;
  free(cl->host);
  free(cl->password);
  free(cl->username);
  free(cl);
}

static void fh_redis__handle_closed(uv_handle_t *h) {
  fh_redis__client *cl = h->data;
  cl->handles--;
  fh_redis__maybe_free(cl);
}

static void fh_redis__resume_err(lua_State *co, const char *reason, const char *kind) {
  lua_pushnil(co);
  lua_pushstring(co, reason);
  lua_pushstring(co, kind);
  fh_wait_resume(co, 3);
}

/* ---- replies ------------------------------------------------------------- */

static void fh_redis__push_value(lua_State *L, const redisReply *r) {
  switch (r->type) {
  case REDIS_REPLY_STRING:
  case REDIS_REPLY_STATUS:
    lua_pushlstring(L, r->str, r->len);
    break;
  case REDIS_REPLY_INTEGER:
    lua_pushnumber(L, (lua_Number)r->integer);
    break;
  case REDIS_REPLY_ERROR:  /* only nested: the top level is false, msg */
    lua_createtable(L, 0, 1);
    lua_pushlstring(L, r->str, r->len);
    lua_setfield(L, -2, "err");
    break;
  case REDIS_REPLY_ARRAY:
    lua_createtable(L, (int)r->elements, 0);
    /* hiredis' reader nests at most 7 levels, so this recursion is shallow;
     * lua_checkstack does not raise (we may not be in protected mode). */
    if (!lua_checkstack(L, 4)) break;
    for (size_t i = 0; i < r->elements; i++) {
      fh_redis__push_value(L, r->element[i]);
      lua_rawseti(L, -2, (int)i + 1);
    }
    break;
  default: /* REDIS_REPLY_NIL: a sentinel, so arrays keep their length */
    lua_pushlightuserdata(L, FH__NULL);
    break;
  }
}

/* Pushes the Lua answer for a reply: the value (1 result) or, for an error
 * reply, false, its message and its kind, the message's first word ("ERR",
 * "WRONGTYPE", "NOSCRIPT", ...) (3 results).  Returns the count pushed. */
int fh_redis_push_reply(lua_State *L, const redisReply *r) {
  if (r->type == REDIS_REPLY_ERROR) {
    lua_pushboolean(L, 0);
    lua_pushlstring(L, r->str, r->len);
    size_t w = 0;
    while (w < r->len && r->str[w] != ' ') w++;
    lua_pushlstring(L, r->str, w);
    return 3;
  }
  fh_redis__push_value(L, r);
  return 1;
}

/* ---- connection state ---------------------------------------------------- */

static void fh_redis__connect(fh_redis__client *cl);
static void fh_redis__on_conn_timer(uv_timer_t *t);
static void fh_redis__on_cmd_timer(uv_timer_t *t);

static void fh_redis__schedule_retry(fh_redis__client *cl) {
  if (cl->closed) return;
  uint64_t delay = fh_redis__jitter(cl->backoff);
  cl->backoff = cl->backoff * 2 > FH__BACKOFF_MAX ? FH__BACKOFF_MAX : cl->backoff * 2;
  uv_timer_start(&cl->conn_timer, fh_redis__on_conn_timer, delay, 0);
}

/* The current connection or connection attempt is over (the context, if
 * any, is already detached): say so once, and retry later. */
static void fh_redis__down(fh_redis__client *cl, const char *reason) {
  int was_up = cl->state == FH__UP;
  cl->state = FH__DOWN;
  fh_redis__set_err(cl, reason);
  if (cl->closed) return;
  if (was_up) {
    cl->losses++;
    fh_log(FH_LOG_WARN, "redis %s:%d: connection lost: %s", cl->host, cl->port, cl->last_err);
    cl->warned = 1;
  } else if (!cl->warned) {
    fh_log(FH_LOG_WARN, "redis %s:%d: cannot connect: %s (retrying)", cl->host, cl->port, cl->last_err);
    cl->warned = 1;
  } else {
    fh_log(FH_LOG_DEBUG, "redis %s:%d: connect failed: %s", cl->host, cl->port, cl->last_err);
  }
  fh_redis__schedule_retry(cl);
}

/* Drops the current context on purpose (stuck, failed handshake, connect
 * timeout).  Never call it from the connect callback: hiredis 0.14 still
 * uses the context after that callback returns. */
static void fh_redis__drop(fh_redis__client *cl, const char *reason) {
  redisAsyncContext *ac = cl->ac;
  cl->ac = NULL;
  if (ac) ac->data = NULL;
  fh_redis__down(cl, reason);
  /* Runs every pending reply callback with NULL, now or (inside a reply
   * callback) as soon as that callback returns: waiters get "connection
   * lost" and see the client down already. */
  if (ac) redisAsyncFree(ac);
}

static void fh_redis__up(fh_redis__client *cl) {
  cl->state = FH__UP;
  uv_timer_stop(&cl->conn_timer);
  cl->backoff = FH__BACKOFF_MIN;
  cl->timeouts_in_row = 0;
  cl->connects++;
  fh_log(FH_LOG_INFO, "redis %s:%d: %s", cl->host, cl->port,
         cl->connects > 1 ? "connected again" : "connected");
  cl->warned = 0;
  /* Take the whole queue: a woken task may wait again (it returns at once). */
  fh_waitq now;
  fh_waitq_move(&cl->ready_waits, &now);
  lua_State *co;
  while ((co = fh_wait_take(fh_waitq_head(&now)))) {
    lua_pushboolean(co, 1);
    fh_wait_resume(co, 1);
  }
}

static void fh_redis__on_reply(redisAsyncContext *ac, void *r, void *priv);

static int fh_redis__send(fh_redis__client *cl, int kind, lua_State *co, int argc, const char **argv, const size_t *lens) {
  fh_redis__cmd *c = calloc(1, sizeof *c);
  if (!c) return -1;
  c->cl = cl;
  c->kind = kind;
  if (redisAsyncCommandArgv(cl->ac, fh_redis__on_reply, c, argc, argv, lens) != REDIS_OK) {
    free(c);
    return -1;
  }
  cl->cmds++;
  if (kind != FH__USER) return 0;
  cl->inflight++;
  c->co = co;
  c->deadline = uv_now(fh_loop()) + cl->timeout_ms;
  c->prev = cl->tail;
  if (cl->tail) cl->tail->next = c; else cl->head = c;
  cl->tail = c;
  if (!uv_is_active((uv_handle_t *)&cl->cmd_timer))
    uv_timer_start(&cl->cmd_timer, fh_redis__on_cmd_timer, cl->timeout_ms, 0);
  return 0;
}

static void fh_redis__on_connect(const redisAsyncContext *cac, int status) {
  redisAsyncContext *ac = (redisAsyncContext *)cac;
  fh_redis__client *cl = ac->data;
  if (!cl) return;
  if (status != REDIS_OK) {
    /* hiredis frees the context after this returns (no disconnect callback). */
    cl->ac = NULL;
    ac->data = NULL;
    fh_redis__down(cl, ac->errstr);
    return;
  }
  /* The connection counts as up only when Redis answered PING: a Redis that
   * is still loading its data set answers -LOADING and we retry later. */
  redisEnableKeepAlive(&ac->c);
  int ok = 0;
  if (cl->password) {
    const char *argv[3] = {"AUTH", cl->username ? cl->username : cl->password, cl->password};
    size_t lens[3] = {4, strlen(argv[1]), strlen(cl->password)};
    ok |= cl->username ? fh_redis__send(cl, FH__HELLO, NULL, 3, argv, lens)
                       : fh_redis__send(cl, FH__HELLO, NULL, 2, argv, lens);
  }
  if (cl->db) {
    char db[16];
    snprintf(db, sizeof db, "%d", cl->db);
    const char *argv[2] = {"SELECT", db};
    size_t lens[2] = {6, strlen(db)};
    ok |= fh_redis__send(cl, FH__HELLO, NULL, 2, argv, lens);
  }
  const char *argv[1] = {"PING"};
  size_t lens[1] = {4};
  ok |= fh_redis__send(cl, FH__LAST_HELLO, NULL, 1, argv, lens);
  if (ok != 0) {
    /* Freeing the context here would be a use-after-free in hiredis: let
     * the connect timer give up on this attempt from a clean stack. */
    cl->abort_reason = "cannot send the handshake";
    uv_timer_start(&cl->conn_timer, fh_redis__on_conn_timer, 0, 0);
  }
}

static void fh_redis__on_disconnect(const redisAsyncContext *cac, int status) {
  redisAsyncContext *ac = (redisAsyncContext *)cac;
  fh_redis__client *cl = ac->data;
  if (!cl || cl->ac != ac) return;  /* dropped on purpose, already handled */
  cl->ac = NULL;
  ac->data = NULL;
  fh_redis__down(cl, ac->err ? ac->errstr : "connection closed");
}

static void fh_redis__on_hello(fh_redis__client *cl, redisAsyncContext *ac, fh_redis__cmd *c, redisReply *reply) {
  if (!reply || cl->ac != ac || cl->state != FH__CONNECTING) return;
  if (reply->type == REDIS_REPLY_ERROR) {
    char msg[160];
    snprintf(msg, sizeof msg, "%s", reply->str);
    fh_redis__drop(cl, msg); /* safe: we are inside a reply callback */
  } else if (c->kind == FH__LAST_HELLO) {
    fh_redis__up(cl);
  }
}

static void fh_redis__on_reply(redisAsyncContext *ac, void *r, void *priv) {
  fh_redis__cmd *c = priv;
  fh_redis__client *cl = c->cl;
  redisReply *reply = r;
  cl->cmds--;
  if (ac == cl->ac) {
    if (reply) {
      cl->timeouts_in_row = 0;
    } else {
      /* A NULL reply means hiredis is freeing the context because the
       * connection broke: mark the client down before anyone is resumed. */
      cl->ac = NULL;
      ac->data = NULL;
      fh_redis__down(cl, ac->err ? ac->errstr : "connection lost");
    }
  }
  if (c->kind != FH__USER) {
    /* ASKING's +OK says nothing; an error would surface on the command
     * that follows it (a redirection again), so it is dropped too. */
    if (c->kind != FH__ASKING) fh_redis__on_hello(cl, ac, c, reply);
    free(c);
    fh_redis__maybe_free(cl);
    return;
  }
  cl->inflight--;
  lua_State *co = c->co;
  if (co) fh_redis__unlink(cl, c);
  free(c);
  if (co) {
    if (reply) fh_wait_resume(co, fh_redis_push_reply(co, reply));
    else fh_redis__resume_err(co, "connection lost", FH_KIND_CLOSED);
  }
  /* The client is still here: it is freed only after its timers closed,
   * which never happens inside this callback. */
  fh_redis__maybe_free(cl);
}

static void fh_redis__on_cmd_timer(uv_timer_t *t) {
  fh_redis__client *cl = t->data;
  uint64_t now = uv_now(fh_loop());
  fh_redis__cmd *c;
  /* A resumed task may send (appends behind), close (empties the list) or
   * wait again; always re-read the head. */
  while ((c = cl->head) && c->deadline <= now) {
    lua_State *co = c->co;
    fh_redis__unlink(cl, c);
    c->co = NULL;  /* hiredis keeps c until the late reply is read */
    cl->timeouts++;
    cl->timeouts_in_row++;
    fh_redis__resume_err(co, "timeout", FH_KIND_TIMEOUT);
  }
  if (!cl->closed && cl->state == FH__UP && cl->timeouts_in_row >= FH__STUCK_AFTER) {
    char msg[96];
    snprintf(msg, sizeof msg, "stuck: %d commands in a row timed out", cl->timeouts_in_row);
    fh_redis__drop(cl, msg);
  }
  if (!cl->closed && cl->head)
    uv_timer_start(&cl->cmd_timer, fh_redis__on_cmd_timer, cl->head->deadline - now, 0);
}

/* ---- connecting ----------------------------------------------------------- */

static void fh_redis__connect_ip(fh_redis__client *cl, const char *ip) {
  redisAsyncContext *ac = redisAsyncConnect(ip, cl->port);
  if (!ac) { fh_redis__down(cl, "out of memory"); return; }
  if (ac->err) {
    fh_redis__down(cl, ac->errstr);
    redisAsyncFree(ac);
    return;
  }
  /* Attach before setting the connect callback: setting it asks the event
   * hooks for a write event right away. */
  if (fh_redis_uv_attach(ac, fh_loop()) != REDIS_OK) {
    redisAsyncFree(ac);
    fh_redis__down(cl, "cannot watch the socket");
    return;
  }
  ac->data = cl;
  cl->ac = ac;
  redisAsyncSetConnectCallback(ac, fh_redis__on_connect);
  redisAsyncSetDisconnectCallback(ac, fh_redis__on_disconnect);
}

static void fh_redis__on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  fh_redis__resolve *rr = (fh_redis__resolve *)req;
  fh_redis__client *cl = rr->cl;
  char ip[INET6_ADDRSTRLEN] = "";
  /* Prefer IPv4 like hiredis does; fall back to the first IPv6 address. */
  for (int fam = 0; fam < 2 && !ip[0] && status == 0; fam++) {
    for (struct addrinfo *a = res; a && !ip[0]; a = a->ai_next) {
      if (fam == 0 && a->ai_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)a->ai_addr)->sin_addr, ip, sizeof ip);
      else if (fam == 1 && a->ai_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)a->ai_addr)->sin6_addr, ip, sizeof ip);
    }
  }
  if (res) uv_freeaddrinfo(res);
  free(rr);
  if (!cl) return; /* closed, or the attempt timed out meanwhile */
  cl->resolving = NULL;
  if (!ip[0]) {
    char msg[160];
    snprintf(msg, sizeof msg, "cannot resolve %s: %s", cl->host, status ? uv_strerror(status) : "no address");
    fh_redis__down(cl, msg);
    return;
  }
  fh_redis__connect_ip(cl, ip);
}

static void fh_redis__abandon_lookup(fh_redis__client *cl) {
  if (!cl->resolving) return;
  cl->resolving->cl = NULL;
  uv_cancel((uv_req_t *)&cl->resolving->req);
  cl->resolving = NULL;
}

static void fh_redis__connect(fh_redis__client *cl) {
  if (cl->closed) return;
  cl->state = FH__CONNECTING;
  cl->abort_reason = NULL;
  /* The loop's cached time may be old (a client made after the app blocked
   * for a while at start): refresh it, or the attempt times out at once. */
  uv_update_time(fh_loop());
  uv_timer_start(&cl->conn_timer, fh_redis__on_conn_timer, cl->connect_timeout_ms, 0);
  unsigned char buf[sizeof(struct in6_addr)];
  if (inet_pton(AF_INET, cl->host, buf) == 1 || inet_pton(AF_INET6, cl->host, buf) == 1) {
    fh_redis__connect_ip(cl, cl->host);
    return;
  }
  /* hiredis would resolve the name with a blocking getaddrinfo on the loop
   * thread; a slow DNS server must not freeze every request of the worker. */
  fh_redis__resolve *rr = calloc(1, sizeof *rr);
  if (!rr) { fh_redis__down(cl, "out of memory"); return; }
  rr->cl = cl;
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  int rc = uv_getaddrinfo(fh_loop(), &rr->req, fh_redis__on_resolved, cl->host, NULL, &hints);
  if (rc != 0) {
    free(rr);
    char msg[160];
    snprintf(msg, sizeof msg, "cannot resolve %s: %s", cl->host, uv_strerror(rc));
    fh_redis__down(cl, msg);
    return;
  }
  cl->resolving = rr;
}

static void fh_redis__on_conn_timer(uv_timer_t *t) {
  fh_redis__client *cl = t->data;
  if (cl->closed) return;
  if (cl->state == FH__DOWN) {
    fh_redis__connect(cl);
  } else if (cl->state == FH__CONNECTING) {
    const char *why = cl->abort_reason ? cl->abort_reason : "connect timeout";
    fh_redis__abandon_lookup(cl);
    fh_redis__drop(cl, why);
  }
}

/* ---- closing ------------------------------------------------------------- */

/* Ends the client.  `notify`: resume the waiting tasks with nil, "closed"
 * (r:close()); __gc passes 0 because the Lua state may be going away. */
static void fh_redis__close(fh_redis__client *cl, int notify) {
  if (cl->closed) return;
  cl->closed = 1;
  cl->state = FH__DOWN;
  fh_redis__set_err(cl, "closed");
  fh_redis__abandon_lookup(cl);
  uv_timer_stop(&cl->conn_timer);
  uv_timer_stop(&cl->cmd_timer);
  uv_close((uv_handle_t *)&cl->conn_timer, fh_redis__handle_closed);
  uv_close((uv_handle_t *)&cl->cmd_timer, fh_redis__handle_closed);
  fh_waitq_cancel(&cl->ready_waits, notify ? FH_WAIT_CLOSED : FH_WAIT_GONE);
  fh_redis__cmd *c;
  while ((c = cl->head)) {
    lua_State *co = c->co;
    fh_redis__unlink(cl, c);
    c->co = NULL;
    if (notify) fh_redis__resume_err(co, "closed", FH_KIND_CLOSED);
  }
  if (cl->ac) {
    redisAsyncContext *ac = cl->ac;
    cl->ac = NULL;
    ac->data = NULL;
    redisAsyncFree(ac); /* remaining reply callbacks find nobody waiting */
  }
  fh_log(FH_LOG_DEBUG, "redis %s:%d: closed", cl->host, cl->port);
}

/* ---- Lua API --------------------------------------------------------------- */

static fh_redis__client *fh_redis__check(lua_State *L) {
  fh_redis__client **ud = luaL_checkudata(L, 1, FH__CLASS);
  if (!*ud) luaL_error(L, "redis client is closed");
  return *ud;
}

static fh_redis__client *fh_redis__check_open(lua_State *L) {
  fh_redis__client *cl = fh_redis__check(L);
  if (cl->closed) luaL_error(L, "redis client is closed");
  return cl;
}

static char *fh_redis__strdup_opt(const char *s) { return s ? strdup(s) : NULL; }

/* new(host, port, db, timeout_ms, connect_timeout_ms, max_pending
 *     [, password [, username]]) -> client.  Starts connecting at once and
 * never yields, so it may run at app start, outside any task. */
static int l_redis_new(lua_State *L) {
  const char *host = luaL_checkstring(L, 1);
  lua_Integer port = luaL_checkinteger(L, 2);
  lua_Integer db = luaL_checkinteger(L, 3);
  lua_Number timeout = luaL_checknumber(L, 4);
  lua_Number ctimeout = luaL_checknumber(L, 5);
  lua_Integer max_pending = luaL_checkinteger(L, 6);
  const char *password = luaL_optstring(L, 7, NULL);
  const char *username = luaL_optstring(L, 8, NULL);
  luaL_argcheck(L, port > 0 && port < 65536, 2, "port out of range");
  luaL_argcheck(L, db >= 0 && db < 1000000, 3, "db out of range");
  luaL_argcheck(L, timeout >= 1, 4, "timeout_ms must be >= 1");
  luaL_argcheck(L, ctimeout >= 1, 5, "connect_timeout_ms must be >= 1");
  luaL_argcheck(L, max_pending >= 1, 6, "max_pending must be >= 1");

  fh_redis__client **ud = lua_newuserdata(L, sizeof *ud);
  *ud = NULL;
  fh_redis__client *cl = calloc(1, sizeof *cl);
  if (!cl) return luaL_error(L, "out of memory");
  cl->host = strdup(host);
  cl->password = fh_redis__strdup_opt(password);
  cl->username = fh_redis__strdup_opt(username);
  if (!cl->host || (password && !cl->password) || (username && !cl->username)) {
    free(cl->host); free(cl->password); free(cl->username); free(cl);
    return luaL_error(L, "out of memory");
  }
  cl->port = (int)port;
  cl->db = (int)db;
  cl->timeout_ms = (uint64_t)timeout;
  cl->connect_timeout_ms = (uint64_t)ctimeout;
  cl->max_pending = max_pending > 0x7fffffff ? 0x7fffffff : (int)max_pending;
  cl->backoff = FH__BACKOFF_MIN;
  cl->has_ud = 1;
  uv_timer_init(fh_loop(), &cl->conn_timer);
  uv_timer_init(fh_loop(), &cl->cmd_timer);
  cl->conn_timer.data = cl->cmd_timer.data = cl;
  cl->handles = 2;
  *ud = cl;
  luaL_getmetatable(L, FH__CLASS);
  lua_setmetatable(L, -2);
  fh_redis__connect(cl);
  return 1;
}

/* Commands that would break a connection shared by many coroutines: they
 * change its mode (pub/sub, monitor), its state for everyone (SELECT), or
 * let other coroutines' commands land inside a transaction. */
static int fh_redis__refused(const char *cmd, size_t len) {
  static const char *const names[] = {
    "subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe", "sunsubscribe",
    "monitor", "multi", "exec", "discard", "watch", "unwatch", "select", "quit", "reset",
    "hello", NULL};
  if (len > 12) return 0;
  for (const char *const *n = names; *n; n++)
    if (strcasecmp(cmd, *n) == 0) return 1;
  return 0;
}

/* call(cmd, ...) -> value | false, "ERR ..." | nil, reason.  Yields.
 * call_asking(cmd, ...): the same, preceded by ASKING (a Redis Cluster ASK
 * redirection).  ASKING only holds for the next command of its connection,
 * and the connection is shared: both go into hiredis' output buffer here,
 * back to back, so no other task's command can land between them. */
static int fh_redis__call(lua_State *L, int asking) {
  fh_redis__client *cl = fh_redis__check_open(L);
  int argc = lua_gettop(L) - 1;
  luaL_argcheck(L, argc >= 1, 2, "command expected");
  for (int i = 2; i <= argc + 1; i++) {
    int t = lua_type(L, i);
    if (t == LUA_TNUMBER) {
      /* Integers as integers (LuaJIT's tostring would print 2^53 as
       * 9.007199254741e+15), anything else with full precision. */
      lua_Number v = lua_tonumber(L, i);
      char buf[40];
      int n = (v == floor(v) && fabs(v) < 9.2e18) ? snprintf(buf, sizeof buf, "%lld", (long long)v)
                                                  : snprintf(buf, sizeof buf, "%.17g", v);
      lua_pushlstring(L, buf, (size_t)n);
      lua_replace(L, i);
    } else if (t != LUA_TSTRING) {
      return luaL_argerror(L, i, lua_pushfstring(L, "string or number expected, got %s", luaL_typename(L, i)));
    }
  }
  size_t cmdlen;
  const char *cmd = lua_tolstring(L, 2, &cmdlen);
  if (fh_redis__refused(cmd, cmdlen))
    return luaL_error(L, "redis: %s is not allowed on a shared connection (use a script, or the URL for the db)", cmd);
  lua_State *co = fh_wait_begin(L);
  if (cl->state != FH__UP) return fh_push_fail(L, FH_KIND_NOT_CONNECTED, "not connected");
  if (cl->inflight >= cl->max_pending) return fh_push_fail(L, FH_KIND_BUSY, "overloaded");

  const char *sargv[FH__ARGV_STACK];
  size_t slens[FH__ARGV_STACK];
  const char **argv = sargv;
  size_t *lens = slens;
  if (argc > FH__ARGV_STACK) {
    /* A userdata, so a later error cannot leak it. */
    void *mem = lua_newuserdata(L, (size_t)argc * (sizeof *argv + sizeof *lens));
    lens = mem;
    argv = (const char **)(lens + argc);
  }
  for (int i = 0; i < argc; i++) argv[i] = lua_tolstring(L, i + 2, &lens[i]);
  if (asking) {
    const char *aargv[1] = {"ASKING"};
    size_t alens[1] = {6};
    if (fh_redis__send(cl, FH__ASKING, NULL, 1, aargv, alens) != 0) return fh_push_fail(L, FH_KIND_NOT_CONNECTED, "not connected");
  }
  if (fh_redis__send(cl, FH__USER, co, argc, argv, lens) != 0) {
    /* A lone ASKING would bless whatever command comes next on this
     * connection: give the connection up (l_redis_close resumes tasks from here
     * too; fh_wait_resume defers while Lua runs). */
    if (asking) fh_redis__drop(cl, "cannot queue a command");
    return fh_push_fail(L, FH_KIND_NOT_CONNECTED, "not connected");
  }
  return lua_yield(L, 0);
}

static int l_redis_call(lua_State *L) { return fh_redis__call(L, 0); }
static int l_redis_call_asking(lua_State *L) { return fh_redis__call(L, 1); }

/* wait_ready(ms) -> true | nil, "timeout", "timeout".  Yields until the
 * client is connected or `ms` passed; returns at once when it is connected.
 * A generation stop does not cut it short: `ms` bounds it. */
static int l_redis_wait_ready(lua_State *L) {
  fh_redis__client *cl = fh_redis__check_open(L);
  lua_Number ms = luaL_checknumber(L, 2);
  luaL_argcheck(L, ms >= 0, 2, "must be >= 0");
  fh_wait_begin(L);
  if (cl->state == FH__UP) { lua_pushboolean(L, 1); return 1; }
  fh_wait_start(L, ms, 1, &cl->ready_waits, NULL, NULL);
  return lua_yield(L, 0);
}

/* status() -> "connected" | "connecting" | "disconnected", last error | nil */
static int l_redis_status(lua_State *L) {
  fh_redis__client *cl = fh_redis__check(L);
  static const char *const names[] = {"disconnected", "connecting", "connected"};
  lua_pushstring(L, names[cl->state]);
  if (cl->last_err[0]) lua_pushstring(L, cl->last_err); else lua_pushnil(L);
  return 2;
}

/* stats() -> { inflight, waiting, connects, losses, timeouts } */
static int l_redis_stats(lua_State *L) {
  fh_redis__client *cl = fh_redis__check(L);
  int waiting = 0;
  for (fh_redis__cmd *c = cl->head; c; c = c->next) waiting++;
  lua_createtable(L, 0, 5);
  lua_pushinteger(L, cl->inflight); lua_setfield(L, -2, "inflight");
  lua_pushinteger(L, waiting); lua_setfield(L, -2, "waiting");
  lua_pushnumber(L, cl->connects); lua_setfield(L, -2, "connects");
  lua_pushnumber(L, cl->losses); lua_setfield(L, -2, "losses");
  lua_pushnumber(L, cl->timeouts); lua_setfield(L, -2, "timeouts");
  return 1;
}

/* close(): pending calls answer nil, "closed"; later calls raise. */
static int l_redis_close(lua_State *L) {
  fh_redis__close(fh_redis__check(L), 1);
  return 0;
}

static int l_redis_gc(lua_State *L) {
  fh_redis__client **ud = luaL_checkudata(L, 1, FH__CLASS);
  fh_redis__client *cl = *ud;
  if (!cl) return 0;
  *ud = NULL;
  fh_redis__close(cl, 0);
  cl->has_ud = 0;
  fh_redis__maybe_free(cl);
  return 0;
}

static int l_redis_tostring(lua_State *L) {
  fh_redis__client **ud = luaL_checkudata(L, 1, FH__CLASS);
  if (*ud) lua_pushfstring(L, "redis client %s:%d (%p)", (*ud)->host, (*ud)->port, (void *)*ud);
  else lua_pushliteral(L, "redis client (collected)");
  return 1;
}

int luaopen_flashhost_redis_driver(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"call", l_redis_call}, {"call_asking", l_redis_call_asking}, {"wait_ready", l_redis_wait_ready}, {"status", l_redis_status}, {"stats", l_redis_stats},
    {"close", l_redis_close}, {"__gc", l_redis_gc}, {"__tostring", l_redis_tostring}, {NULL, NULL}};
  static const luaL_Reg fns[] = {{"new", l_redis_new}, {NULL, NULL}};
  fh_new_class(L, FH__CLASS, methods);
  lua_newtable(L);
  luaL_register(L, NULL, fns);
  lua_pushlightuserdata(L, FH__NULL);
  lua_setfield(L, -2, "null");
  return 1;
}

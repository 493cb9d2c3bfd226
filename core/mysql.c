/*
 * flashhost.mysql.driver: one MariaDB/MySQL connection driven by the loop.
 *
 * MariaDB Connector/C runs each blocking call as a coroutine of its own:
 * `_start` runs until the call would block and returns the events it waits
 * for; we watch the socket with a uv_poll (and a uv_timer for
 * MYSQL_WAIT_TIMEOUT) and hand what happened to `_cont`, until it returns 0.
 * A statement is three such calls in a row (real_query, store_result, and
 * next_result for any further result set), so each connection carries a small
 * state machine, `op`, with one waiting Lua coroutine at most.
 *
 * Lifetimes: a Lua userdata points to the C struct.  The struct lives on
 * until (1) no operation is in flight, (2) the MYSQL handle is closed, and
 * (3) every libuv handle went through its close callback.  Whoever ends the
 * last of these calls fh__maybe_free.  A caller whose deadline passed is
 * answered at once and forgotten (co = NULL); the operation is cut short by
 * shutting the socket down and finishes in the background, touching no Lua.
 *
 * The Lua facade (core/lua/flashhost/mysql.lua) does the pooling, error names
 * and transactions; this file is mechanics only.
 */
#include "fh.h"
#include "mysql_params.h"

#include <mysql.h>
#include <errmsg.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define FH__CONN_MT "flashhost.mysql.conn"
#define FH__WAITER_MT "flashhost.mysql.waiter"

enum {
  FH__IDLE,
  FH__RESOLVE,  /* uv_getaddrinfo for a host name (the connector's own lookup blocks) */
  FH__CONNECT,  /* mysql_real_connect */
  FH__QUERY,    /* mysql_real_query */
  FH__STORE,    /* mysql_store_result of the first result set: the answer */
  FH__NEXT,     /* mysql_next_result: a CALL may send more result sets */
  FH__DRAIN,    /* mysql_store_result of a further result set, thrown away */
  FH__CLOSE     /* mysql_close: COM_QUIT, then the handle is freed */
};

typedef struct fh__conn {
  MYSQL *m;               /* NULL once closed (mysql_close frees it) */
  int op;
  int connected;          /* the handshake succeeded */
  int broken;             /* cannot carry another statement */
  int closed;             /* no new operation; close when idle */
  int has_ud;             /* a Lua userdata points here */
  int handles;            /* libuv handles not yet through their close callback */
  int handles_closing;
  uv_poll_t *poll;        /* on poll_fd; re-made when the socket changes */
  int poll_fd;
  int poll_fallback;      /* no poll handle: retry from wait_timer */
  int fallback_events;
  uv_timer_t wait_timer;  /* MYSQL_WAIT_TIMEOUT, or the fallback retry */
  uv_timer_t deadline;    /* the caller's time limit for this operation */
  uv_getaddrinfo_t resolve;
  unsigned timeout_ms;
  lua_State *co;          /* the waiting coroutine; NULL once answered */
  int *sync_nres;         /* set while the starting Lua call is still on the C stack */
  /* Connect parameters: the connector reads them across suspensions. */
  char *host, *user, *password, *database;
  char addr[INET6_ADDRSTRLEN];
  unsigned port;
  /* The statement in flight and what it produced. */
  char *sql;
  MYSQL *ret_m;
  int ret_int;
  MYSQL_RES *ret_res;
  MYSQL_RES *res;
  unsigned long long affected, insert_id;
  unsigned err_no;
  char sqlstate[6];
  char err[512];
} fh__conn;

static void fh__advance(fh__conn *c);
static void fh__close(fh__conn *c);
static void fh__wait(fh__conn *c, int st);

/* ---- lifetime ------------------------------------------------------------ */

static void fh__maybe_free(fh__conn *c) {
  if (c->has_ud || c->handles > 0 || c->m || c->op != FH__IDLE) return;
  free(c->host);
  free(c->user);
  free(c->password);
  free(c->database);
  free(c->sql);
  free(c);
}

static void fh__timer_closed(uv_handle_t *h) {
  fh__conn *c = h->data;
  c->handles--;
  fh__maybe_free(c);
}

static void fh__poll_closed(uv_handle_t *h) {
  fh__conn *c = h->data;
  free(h);
  c->handles--;
  fh__maybe_free(c);
}

static void fh__close_handles(fh__conn *c) {
  if (c->handles_closing) return;
  c->handles_closing = 1;
  uv_close((uv_handle_t *)&c->wait_timer, fh__timer_closed);
  uv_close((uv_handle_t *)&c->deadline, fh__timer_closed);
  if (c->poll) {
    uv_close((uv_handle_t *)c->poll, fh__poll_closed);
    c->poll = NULL;
  }
}

static void fh__forget_secrets(fh__conn *c) {
  if (c->password) {
    memset(c->password, 0, strlen(c->password));
    free(c->password);
    c->password = NULL;
  }
  free(c->user);
  free(c->database);
  c->user = c->database = NULL;
}

/* ---- waiting on the socket ----------------------------------------------- */

static void fh__cont(fh__conn *c, int ready) {
  /* The connector may close the socket inside _cont: never leave a poll
   * running across the call. */
  if (c->poll) uv_poll_stop(c->poll);
  uv_timer_stop(&c->wait_timer);
  c->poll_fallback = 0;
  int st = 0;
  switch (c->op) {
    case FH__CONNECT: st = mysql_real_connect_cont(&c->ret_m, c->m, ready); break;
    case FH__QUERY: st = mysql_real_query_cont(&c->ret_int, c->m, ready); break;
    case FH__STORE:
    case FH__DRAIN: st = mysql_store_result_cont(&c->ret_res, c->m, ready); break;
    case FH__NEXT: st = mysql_next_result_cont(&c->ret_int, c->m, ready); break;
    case FH__CLOSE: st = mysql_close_cont(c->m, ready); break;
    default: return;
  }
  if (st) fh__wait(c, st);
  else fh__advance(c);
}

static void fh__on_poll(uv_poll_t *p, int status, int events) {
  fh__conn *c = p->data;
  int ready = 0;
  /* libuv reports a socket error as a status (UV_EBADF) and stops the
   * handle; the connector learns about it only by trying, so say "both". */
  if (status < 0) {
    ready = MYSQL_WAIT_READ | MYSQL_WAIT_WRITE;
  } else {
    if (events & UV_READABLE) ready |= MYSQL_WAIT_READ;
    if (events & UV_WRITABLE) ready |= MYSQL_WAIT_WRITE;
    if (events & UV_PRIORITIZED) ready |= MYSQL_WAIT_EXCEPT;
  }
  fh__cont(c, ready);
}

static void fh__on_wait_timer(uv_timer_t *t) {
  fh__conn *c = t->data;
  fh__cont(c, c->poll_fallback ? c->fallback_events : MYSQL_WAIT_TIMEOUT);
}

/* Arms the watchers for the wait mask `st` returned by a _start/_cont. */
static void fh__wait(fh__conn *c, int st) {
  int events = 0;
  if (st & MYSQL_WAIT_READ) events |= UV_READABLE;
  if (st & MYSQL_WAIT_WRITE) events |= UV_WRITABLE;
  if (st & MYSQL_WAIT_EXCEPT) events |= UV_PRIORITIZED;
  /* The socket can change during connect (one per address tried): look it
   * up again after every suspension. */
  int fd = (int)mysql_get_socket(c->m);
  if (c->poll && c->poll_fd != fd) {
    /* Closed now, in the call that closed its socket (see fh__done). */
    uv_close((uv_handle_t *)c->poll, fh__poll_closed);
    c->poll = NULL;
  }
  if (events && fd >= 0) {
    if (!c->poll) {
      uv_poll_t *p = malloc(sizeof *p);
      if (p && uv_poll_init_socket(fh_loop(), p, fd) == 0) {
        p->data = c;
        c->poll = p;
        c->poll_fd = fd;
        c->handles++;
      } else {
        free(p);
      }
    }
  }
  if (events && c->poll) {
    uv_poll_start(c->poll, events, fh__on_poll);
  } else if (events) {
    /* No way to watch the socket (out of memory): let the connector try
     * again shortly; it suspends again if nothing is ready yet. */
    c->poll_fallback = 1;
    c->fallback_events = st & (MYSQL_WAIT_READ | MYSQL_WAIT_WRITE | MYSQL_WAIT_EXCEPT);
    uv_timer_start(&c->wait_timer, fh__on_wait_timer, 5, 0);
    return;
  }
  if (st & MYSQL_WAIT_TIMEOUT)
    uv_timer_start(&c->wait_timer, fh__on_wait_timer, mysql_get_timeout_value_ms(c->m), 0);
}

/* ---- answering the caller ------------------------------------------------ */

static int fh__fatal(unsigned e) {
  if (e >= CR_MIN_ERROR && e <= CR_MAX_ERROR) return 1;
  switch (e) {
    case 1053: /* ER_SERVER_SHUTDOWN */
    case 1152: /* ER_ABORTING_CONNECTION */
    case 1153: /* ER_NET_PACKET_TOO_LARGE: the server drops the connection */
    case 1154: case 1155: case 1156: case 1157: case 1158: case 1159: case 1160:
    case 1161: /* ER_NET_* read/write errors */
    case 1184: /* ER_NEW_ABORTING_CONNECTION */
    case 1927: /* ER_CONNECTION_KILLED */
    case 4031: /* ER_CLIENT_INTERACTION_TIMEOUT */
      return 1;
    default:
      return 0;
  }
}

static void fh__set_error(fh__conn *c, unsigned no, const char *state, const char *msg) {
  c->err_no = no;
  snprintf(c->sqlstate, sizeof c->sqlstate, "%s", state ? state : "HY000");
  snprintf(c->err, sizeof c->err, "%s", msg && *msg ? msg : "unknown error");
}

static void fh__capture_error(fh__conn *c) {
  unsigned no = mysql_errno(c->m);
  fh__set_error(c, no ? no : CR_UNKNOWN_ERROR, mysql_sqlstate(c->m), mysql_error(c->m));
}

static int fh__push_error(lua_State *co, fh__conn *c) {
  lua_pushnil(co);
  lua_pushstring(co, c->err);
  lua_pushinteger(co, (lua_Integer)c->err_no);
  lua_pushstring(co, c->sqlstate);
  return 4;
}

static void fh__push_conn(lua_State *co, fh__conn *c) {
  fh__conn **ud = lua_newuserdata(co, sizeof *ud);
  *ud = c;
  c->has_ud = 1;
  luaL_getmetatable(co, FH__CONN_MT);
  lua_setmetatable(co, -2);
}

/* A result set becomes an array of rows keyed by column name, values as
 * strings (NULL as the null sentinel), with the column names in `columns`. */
static int fh__push_result(lua_State *co, fh__conn *c) {
  MYSQL_RES *res = c->res;
  if (!res) {
    lua_createtable(co, 0, 2);
    lua_pushnumber(co, (lua_Number)c->affected);
    lua_setfield(co, -2, "affected_rows");
    lua_pushnumber(co, (lua_Number)c->insert_id);
    lua_setfield(co, -2, "insert_id");
    return 1;
  }
  unsigned nf = mysql_num_fields(res);
  MYSQL_FIELD *f = mysql_fetch_fields(res);
  unsigned long long nr = mysql_num_rows(res);
  lua_createtable(co, nr < 0x7fffffff ? (int)nr : 0, 1);
  lua_createtable(co, (int)nf, 0);
  for (unsigned i = 0; i < nf; i++) {
    lua_pushlstring(co, f[i].name, f[i].name_length);
    lua_rawseti(co, -2, (int)i + 1);
  }
  lua_setfield(co, -2, "columns");
  MYSQL_ROW row;
  int r = 0;
  while ((row = mysql_fetch_row(res)) != NULL) {
    unsigned long *len = mysql_fetch_lengths(res);
    lua_createtable(co, 0, (int)nf);
    for (unsigned i = 0; i < nf; i++) {
      lua_pushlstring(co, f[i].name, f[i].name_length);
      if (row[i]) lua_pushlstring(co, row[i], len[i]);
      else lua_pushlightuserdata(co, NULL);
      lua_rawset(co, -3);
    }
    lua_rawseti(co, -2, ++r);
  }
  return 1;
}

/* The operation (connect or statement) is over: answer the caller, if it
 * still waits, as the very last step, because resuming it runs Lua code that
 * may start the next operation on this connection. */
static void fh__done(fh__conn *c) {
  int was_connect = c->op == FH__RESOLVE || c->op == FH__CONNECT;
  uv_timer_stop(&c->deadline);
  uv_timer_stop(&c->wait_timer);
  /* A failed operation may have closed the socket inside the connector.
   * Drop its (stopped) poll handle now, while the descriptor number is
   * still free: stopping or closing it later would take out of epoll
   * whatever handle reuses that number by then. */
  if (c->poll && (!c->m || (int)mysql_get_socket(c->m) != c->poll_fd)) {
    uv_close((uv_handle_t *)c->poll, fh__poll_closed);
    c->poll = NULL;
  }
  c->op = FH__IDLE;
  if (c->err_no) {
    if (fh__fatal(c->err_no) || !c->m || (int)mysql_get_socket(c->m) < 0) c->broken = 1;
  }
  lua_State *co = c->co;
  int *sync = c->sync_nres;
  c->co = NULL;
  c->sync_nres = NULL;
  int n = 0;
  if (co) {
    lua_checkstack(co, 8);
    if (c->err_no) n = fh__push_error(co, c);
    else if (was_connect) { fh__push_conn(co, c); n = 1; }
    else n = fh__push_result(co, c);
  }
  if (c->res) mysql_free_result(c->res);
  c->res = NULL;
  free(c->sql);
  c->sql = NULL;
  c->err_no = 0;
  c->err[0] = 0;
  if (was_connect) fh__forget_secrets(c);
  /* Nobody holds a failed or abandoned connection: close it now.  A
   * close() that came while busy is carried out here too. */
  if (!c->has_ud || c->closed) fh__close(c);
  if (!co) return;
  if (sync) *sync = n;
  else fh_wait_resume(co, n);
}

static void fh__on_deadline(uv_timer_t *t) {
  fh__conn *c = t->data;
  c->broken = 1;
  /* Cut the operation short: a shut-down socket polls ready at once and the
   * connector fails it with "lost connection"; fh__done then cleans up. */
  if (c->op == FH__RESOLVE) {
    uv_cancel((uv_req_t *)&c->resolve);
  } else if (c->m) {
    int fd = (int)mysql_get_socket(c->m);
    if (fd >= 0) shutdown(fd, SHUT_RDWR);
  }
  lua_State *co = c->co;
  if (!co) return;
  c->co = NULL;
  lua_checkstack(co, 4);
  lua_pushnil(co);
  if (c->op == FH__RESOLVE || c->op == FH__CONNECT)
    lua_pushfstring(co, "timeout: no connection within %d ms", (int)c->timeout_ms);
  else
    lua_pushfstring(co, "timeout: no answer within %d ms", (int)c->timeout_ms);
  lua_pushinteger(co, 0);
  lua_pushliteral(co, "HY000");
  /* c stays alive: its operation is still in flight. */
  fh_wait_resume(co, 4);
}

static void fh__start_deadline(fh__conn *c, unsigned ms) {
  c->timeout_ms = ms;
  if (ms > 0) uv_timer_start(&c->deadline, fh__on_deadline, ms, 0);
}

/* ---- the state machine --------------------------------------------------- */

/* A phase finished without waiting: start the next one, or finish. */
static void fh__advance(fh__conn *c) {
  for (;;) {
    int st;
    switch (c->op) {
      case FH__CONNECT:
        if (!c->ret_m) fh__capture_error(c);
        else c->connected = 1;
        fh__done(c);
        return;
      case FH__QUERY:
        if (c->ret_int != 0) { fh__capture_error(c); fh__done(c); return; }
        c->op = FH__STORE;
        st = mysql_store_result_start(&c->ret_res, c->m);
        break;
      case FH__STORE:
      case FH__DRAIN:
        /* NULL is also the answer of a statement without a result set. */
        if (!c->ret_res && mysql_errno(c->m)) { fh__capture_error(c); fh__done(c); return; }
        if (c->op == FH__STORE) {
          c->res = c->ret_res;
          c->affected = mysql_affected_rows(c->m);
          c->insert_id = mysql_insert_id(c->m);
        } else if (c->ret_res) {
          mysql_free_result(c->ret_res);
        }
        c->ret_res = NULL;
        /* Unread result sets would make the next statement fail with
         * "commands out of sync"; read them now. */
        if (!mysql_more_results(c->m)) { fh__done(c); return; }
        c->op = FH__NEXT;
        st = mysql_next_result_start(&c->ret_int, c->m);
        break;
      case FH__NEXT:
        if (c->ret_int > 0) { fh__capture_error(c); fh__done(c); return; }
        if (c->ret_int < 0) { fh__done(c); return; }
        c->op = FH__DRAIN;
        st = mysql_store_result_start(&c->ret_res, c->m);
        break;
      case FH__CLOSE:
        /* mysql_close_cont returned 0: the handle is freed. */
        c->m = NULL;
        c->op = FH__IDLE;
        uv_timer_stop(&c->deadline);
        fh__close_handles(c);
        return;
      default:
        return;
    }
    if (st) { fh__wait(c, st); return; }
  }
}

static void fh__start_connect(fh__conn *c) {
  c->op = FH__CONNECT;
  int st = mysql_real_connect_start(&c->ret_m, c->m, c->addr, c->user, c->password,
                                    c->database, c->port, NULL, 0);
  if (st) fh__wait(c, st);
  else fh__advance(c);
}

static void fh__on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *ai) {
  fh__conn *c = req->data;
  int ok = 0;
  /* One address is tried: IPv4 first, as servers often listen on 127.0.0.1
   * or 0.0.0.0 only while "localhost" may resolve to ::1 first. */
  struct addrinfo *pick = NULL;
  for (struct addrinfo *p = status == 0 ? ai : NULL; p; p = p->ai_next) {
    if (p->ai_family == AF_INET) { pick = p; break; }
    if (p->ai_family == AF_INET6 && !pick) pick = p;
  }
  if (pick) {
    const void *a = pick->ai_family == AF_INET6
                        ? (const void *)&((struct sockaddr_in6 *)pick->ai_addr)->sin6_addr
                        : (const void *)&((struct sockaddr_in *)pick->ai_addr)->sin_addr;
    ok = inet_ntop(pick->ai_family, a, c->addr, sizeof c->addr) != NULL;
  }
  uv_freeaddrinfo(ai);
  if (!ok || !c->co) {
    char msg[300];
    snprintf(msg, sizeof msg, "cannot resolve host '%s': %s", c->host,
             status ? uv_strerror(status) : "no address");
    fh__set_error(c, CR_UNKNOWN_HOST, "HY000", msg);
    fh__done(c);
    return;
  }
  fh__start_connect(c);
}

/* Closes the connection once idle: a polite COM_QUIT on the loop when the
 * socket is healthy, a plain mysql_close (no I/O worth waiting for) when it
 * is already dead; then the libuv handles. */
static void fh__close(fh__conn *c) {
  c->closed = 1;
  if (c->op != FH__IDLE) return;
  if (c->m) {
    if (c->connected && !c->broken) {
      c->op = FH__CLOSE;
      fh__start_deadline(c, 1000);
      int st = mysql_close_start(c->m);
      if (st) { fh__wait(c, st); return; }
      c->op = FH__IDLE;
      uv_timer_stop(&c->deadline);
    } else {
      mysql_close(c->m);
    }
    c->m = NULL;
  }
  fh__close_handles(c);
}

/* ---- Lua: connections ---------------------------------------------------- */

/* NULL once finalized: during lua_close another finalizer (the pool's) may
 * still reach a connection whose own __gc already ran. */
static fh__conn *fh__check(lua_State *L) {
  fh__conn **ud = luaL_checkudata(L, 1, FH__CONN_MT);
  return *ud;
}

static fh__conn *fh__check_open(lua_State *L) {
  fh__conn *c = fh__check(L);
  if (!c || c->closed) luaL_error(L, "the connection is closed");
  return c;
}

static const char *fh__opt_string(lua_State *L, int t, const char *k, const char *dflt) {
  /* The string stays referenced by the options table (argument 1). */
  lua_getfield(L, t, k);
  if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING)
    luaL_error(L, "connect: option '%s' must be a string", k);
  const char *v = lua_isnil(L, -1) ? dflt : lua_tostring(L, -1);
  lua_pop(L, 1);
  return v;
}

static lua_Number fh__opt_number(lua_State *L, int t, const char *k, lua_Number dflt) {
  lua_getfield(L, t, k);
  lua_Number v = dflt;
  if (!lua_isnil(L, -1)) {
    if (!lua_isnumber(L, -1)) luaL_error(L, "connect: option '%s' must be a number", k);
    v = lua_tonumber(L, -1);
  }
  lua_pop(L, 1);
  return v;
}

static char *fh__dup(const char *s) { return s ? strdup(s) : NULL; }

/*
 * connect{host, port, user, password, database, timeout_ms} -> conn
 *                                         | nil, msg, errno, sqlstate
 * Yields.  A host name is resolved on the loop first.  The connection speaks
 * utf8mb4 over TCP, with LOAD DATA LOCAL and multi-statements off.
 */
static int l_connect(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  const char *host = fh__opt_string(L, 1, "host", "127.0.0.1");
  const char *user = fh__opt_string(L, 1, "user", NULL);
  const char *password = fh__opt_string(L, 1, "password", NULL);
  const char *database = fh__opt_string(L, 1, "database", NULL);
  lua_Number port = fh__opt_number(L, 1, "port", 3306);
  lua_Number tmo = fh__opt_number(L, 1, "timeout_ms", 5000);
  luaL_argcheck(L, port >= 1 && port <= 65535, 1, "port must be 1..65535");
  luaL_argcheck(L, tmo >= 1 && tmo <= 86400000, 1, "timeout_ms must be 1..86400000");
  luaL_argcheck(L, user != NULL, 1, "user is required");
  lua_State *co = fh_wait_begin(L);

  fh__conn *c = calloc(1, sizeof *c);
  if (!c) return luaL_error(L, "out of memory");
  c->host = fh__dup(host);
  c->user = fh__dup(user);
  c->password = fh__dup(password);
  c->database = fh__dup(database);
  c->port = (unsigned)port;
  c->m = mysql_init(NULL);
  if (!c->m || !c->host || !c->user || (password && !c->password) ||
      (database && !c->database)) {
    if (c->m) mysql_close(c->m);
    c->m = NULL;
    fh__maybe_free(c);
    return luaL_error(L, "out of memory");
  }
  /* MYSQL_OPT_NONBLOCK must come before the first _start: it sets up the
   * context the _start/_cont calls run on. */
  mysql_options(c->m, MYSQL_OPT_NONBLOCK, 0);
  unsigned proto = MYSQL_PROTOCOL_TCP;
  mysql_options(c->m, MYSQL_OPT_PROTOCOL, &proto);
  unsigned secs = ((unsigned)tmo + 999) / 1000;
  mysql_options(c->m, MYSQL_OPT_CONNECT_TIMEOUT, &secs);
  mysql_options(c->m, MYSQL_SET_CHARSET_NAME, "utf8mb4");
  unsigned no = 0;
  mysql_options(c->m, MYSQL_OPT_LOCAL_INFILE, &no);
  uv_timer_init(fh_loop(), &c->wait_timer);
  uv_timer_init(fh_loop(), &c->deadline);
  c->wait_timer.data = c->deadline.data = c;
  c->handles = 2;
  c->resolve.data = c;

  int nres = -1;
  c->co = co;
  c->sync_nres = &nres;
  fh__start_deadline(c, (unsigned)tmo);
  struct in_addr a4;
  struct in6_addr a6;
  if (inet_pton(AF_INET, host, &a4) == 1 || inet_pton(AF_INET6, host, &a6) == 1) {
    snprintf(c->addr, sizeof c->addr, "%s", host);
    fh__start_connect(c);
  } else {
    /* The connector resolves names with a blocking getaddrinfo(): do it on
     * libuv's thread pool instead and hand it a numeric address. */
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    c->op = FH__RESOLVE;
    int rc = uv_getaddrinfo(fh_loop(), &c->resolve, fh__on_resolved, host, NULL, &hints);
    if (rc != 0) {
      char msg[300];
      snprintf(msg, sizeof msg, "cannot resolve host '%s': %s", host, uv_strerror(rc));
      fh__set_error(c, CR_UNKNOWN_HOST, "HY000", msg);
      fh__done(c);
    }
  }
  if (nres >= 0) return nres; /* finished (or failed) without waiting */
  c->sync_nres = NULL;
  return lua_yield(L, 0);
}

/*
 * conn:query(sql [, timeout_ms]) -> rows | {affected_rows, insert_id}
 *                                 | nil, msg, errno, sqlstate
 * Yields.  `sql` is sent as is (see conn:format).  Raises if the connection
 * is closed or already busy; a broken connection answers nil, msg at once.
 * On timeout: nil, "timeout: ...", 0 and the connection is broken.
 */
static int l_query(lua_State *L) {
  fh__conn *c = fh__check_open(L);
  size_t len;
  const char *sql = luaL_checklstring(L, 2, &len);
  lua_Number tmo = luaL_optnumber(L, 3, 0);
  luaL_argcheck(L, tmo >= 0 && tmo <= 86400000, 3, "timeout_ms must be 0..86400000");
  if (c->op != FH__IDLE)
    return luaL_error(L, "the connection is busy: one statement at a time per connection");
  if (c->broken || !c->m) {
    lua_pushnil(L);
    lua_pushliteral(L, "the connection is broken");
    lua_pushinteger(L, CR_SERVER_GONE_ERROR);
    lua_pushliteral(L, "HY000");
    return 4;
  }
  lua_State *co = fh_wait_begin(L);
  c->sql = malloc(len + 1);
  if (!c->sql) return luaL_error(L, "out of memory");
  memcpy(c->sql, sql, len);
  c->sql[len] = 0;

  int nres = -1;
  c->co = co;
  c->sync_nres = &nres;
  fh__start_deadline(c, (unsigned)tmo);
  c->op = FH__QUERY;
  int st = mysql_real_query_start(&c->ret_int, c->m, c->sql, len);
  if (st) fh__wait(c, st);
  else fh__advance(c);
  if (nres >= 0) return nres;
  c->sync_nres = NULL;
  return lua_yield(L, 0);
}

static size_t fh__escape(void *ud, char *to, const char *from, size_t len) {
  unsigned long n = mysql_real_escape_string((MYSQL *)ud, to, from, (unsigned long)len);
  return n == (unsigned long)-1 ? (size_t)-1 : (size_t)n;
}

/*
 * conn:format(sql, ...) -> statement
 * Replaces each `?` placeholder of sql (not those inside quoted literals or
 * comments) with the next argument as an SQL literal: strings quoted and
 * escaped for this connection's character set, numbers as numbers, booleans
 * as 1/0, nil and the null sentinel as NULL.  Raises on a wrong number of
 * arguments or an argument of another type.
 */
static int l_format(lua_State *L) {
  fh__conn *c = fh__check_open(L);
  size_t len;
  const char *sql = luaL_checklstring(L, 2, &len);
  if (!c->m) return luaL_error(L, "the connection is closed");
  int n = lua_gettop(L) - 2;
  fh_mysql_param *p = n > 0 ? calloc((size_t)n, sizeof *p) : NULL;
  if (n > 0 && !p) return luaL_error(L, "out of memory");
  for (int i = 0; i < n; i++) {
    int idx = i + 3;
    switch (lua_type(L, idx)) {
      case LUA_TNIL: p[i].type = FH_MYSQL_P_NULL; break;
      case LUA_TBOOLEAN: p[i].type = FH_MYSQL_P_BOOL; p[i].b = lua_toboolean(L, idx); break;
      case LUA_TNUMBER: p[i].type = FH_MYSQL_P_NUMBER; p[i].num = lua_tonumber(L, idx); break;
      case LUA_TSTRING:
        p[i].type = FH_MYSQL_P_STRING;
        p[i].str = lua_tolstring(L, idx, &p[i].len);
        break;
      case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL) { p[i].type = FH_MYSQL_P_NULL; break; }
        /* fall through */
      default:
        free(p);
        return luaL_error(L, "parameter %d: a %s cannot be an SQL value", i + 1,
                          luaL_typename(L, idx));
    }
  }
  char err[200];
  size_t outlen = 0;
  char *out = fh_mysql_expand(sql, len, p, (size_t)n, fh__escape, c->m, &outlen, err, sizeof err);
  free(p);
  if (!out) return luaL_error(L, "%s", err);
  lua_pushlstring(L, out, outlen);
  free(out);
  return 1;
}

/* conn:alive() -> boolean: idle, connected, and the server did not hang up
 * meanwhile.  An idle socket that polls readable was closed by the server
 * (restart, wait_timeout, KILL): the connection is marked broken. */
static int l_alive(lua_State *L) {
  fh__conn *c = fh__check(L);
  int ok = c && c->m && c->connected && !c->broken && !c->closed && c->op == FH__IDLE;
  if (ok) {
    struct pollfd pfd = {.fd = (int)mysql_get_socket(c->m), .events = POLLIN};
    if (pfd.fd < 0 || poll(&pfd, 1, 0) != 0) {
      c->broken = 1;
      ok = 0;
    }
  }
  lua_pushboolean(L, ok);
  return 1;
}

/* conn:close(): closes the connection (after the statement in flight, if
 * any).  Idempotent; never raises. */
static int l_close(lua_State *L) {
  fh__conn *c = fh__check(L);
  if (c && !c->closed) fh__close(c);
  return 0;
}

/* conn:thread_id() -> the server's id for this connection (CONNECTION_ID()). */
static int l_thread_id(lua_State *L) {
  fh__conn *c = fh__check_open(L);
  lua_pushnumber(L, c->m ? (lua_Number)mysql_thread_id(c->m) : 0);
  return 1;
}

static int l_tostring(lua_State *L) {
  fh__conn *c = fh__check(L);
  if (!c) { lua_pushliteral(L, "flashhost.mysql.conn(closed)"); return 1; }
  const char *state = c->closed ? "closed" : c->broken ? "broken"
                    : c->op != FH__IDLE ? "busy" : "idle";
  lua_pushfstring(L, "flashhost.mysql.conn(%s:%d, %s)", c->host ? c->host : "?",
                  (int)c->port, state);
  return 1;
}

static int l_gc(lua_State *L) {
  fh__conn **ud = luaL_checkudata(L, 1, FH__CONN_MT);
  fh__conn *c = *ud;
  if (!c) return 0;
  *ud = NULL;
  c->has_ud = 0;
  /* Busy: fh__done closes it when the operation ends. */
  if (c->op == FH__IDLE) {
    fh__close(c);
    fh__maybe_free(c);
  }
  return 0;
}

/* ---- Lua: waiters ---------------------------------------------------------
 * A waiter suspends one task until another task wakes it or time runs out.
 * The pool queues its callers on them: resuming a task must go through the
 * scheduler, which Lua code alone cannot do. */

typedef struct {
  uv_timer_t timer;
  lua_State *co;
} fh__waiter;

static void fh__waiter_free(uv_handle_t *h) { free(h->data); }

static void fh__waiter_timeout(uv_timer_t *t) {
  fh__waiter *w = t->data;
  lua_State *co = w->co;
  w->co = NULL;
  lua_pushnil(co);
  lua_pushliteral(co, "timeout");
  fh_wait_resume(co, 2);
}

/* waiter() -> a new waiter. */
static int l_waiter(lua_State *L) {
  fh__waiter *w = calloc(1, sizeof *w);
  if (!w) return luaL_error(L, "out of memory");
  uv_timer_init(fh_loop(), &w->timer);
  w->timer.data = w;
  fh__waiter **ud = lua_newuserdata(L, sizeof *ud);
  *ud = w;
  luaL_getmetatable(L, FH__WAITER_MT);
  lua_setmetatable(L, -2);
  return 1;
}

/* w:wait(timeout_ms) -> true, values given to wake | nil, "timeout".  Yields. */
static int l_waiter_wait(lua_State *L) {
  fh__waiter *w = *(fh__waiter **)luaL_checkudata(L, 1, FH__WAITER_MT);
  lua_Number ms = luaL_checknumber(L, 2);
  luaL_argcheck(L, ms >= 0 && ms <= 86400000, 2, "must be 0..86400000");
  if (w->co) return luaL_error(L, "somebody already waits on this waiter");
  w->co = fh_wait_begin(L);
  uv_timer_start(&w->timer, fh__waiter_timeout, (uint64_t)ms, 0);
  return lua_yield(L, 0);
}

/* w:wake(...) -> true if a task was waiting (it gets true, ...), else false. */
static int l_waiter_wake(lua_State *L) {
  fh__waiter *w = *(fh__waiter **)luaL_checkudata(L, 1, FH__WAITER_MT);
  if (!w->co) { lua_pushboolean(L, 0); return 1; }
  int n = lua_gettop(L) - 1;
  lua_State *co = w->co;
  if (!lua_checkstack(co, n + 1)) return luaL_error(L, "too many values");
  w->co = NULL;
  uv_timer_stop(&w->timer);
  lua_pushboolean(co, 1);
  lua_xmove(L, co, n);
  fh_wait_resume(co, n + 1);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_waiter_gc(lua_State *L) {
  fh__waiter **ud = luaL_checkudata(L, 1, FH__WAITER_MT);
  if (*ud) uv_close((uv_handle_t *)&(*ud)->timer, fh__waiter_free);
  *ud = NULL;
  return 0;
}

int luaopen_flashhost_mysql_driver(lua_State *L) {
  static const luaL_Reg conn_methods[] = {
    {"query", l_query}, {"format", l_format}, {"alive", l_alive}, {"close", l_close},
    {"thread_id", l_thread_id}, {"__tostring", l_tostring}, {"__gc", l_gc}, {NULL, NULL}};
  static const luaL_Reg waiter_methods[] = {
    {"wait", l_waiter_wait}, {"wake", l_waiter_wake}, {"__gc", l_waiter_gc}, {NULL, NULL}};
  static const luaL_Reg fns[] = {{"connect", l_connect}, {"waiter", l_waiter}, {NULL, NULL}};
  fh_new_class(L, FH__CONN_MT, conn_methods);
  fh_new_class(L, FH__WAITER_MT, waiter_methods);
  lua_newtable(L);
  luaL_register(L, NULL, fns);
  /* SQL NULL in results and parameters: a NULL light userdata, the same
   * value as cjson.null, so rows encode to JSON as they are. */
  lua_pushlightuserdata(L, NULL);
  lua_setfield(L, -2, "null");
  return 1;
}

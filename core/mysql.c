/*
 * flashhost.mysql.driver: the Lua binding of one MariaDB/MySQL connection.
 * The connection and its state machine live in core/mysql_conn.c, the pool's
 * waiter in core/mysql_waiter.c; pooling, error kinds and transactions live
 * in the Lua facade (core/lua/flashhost/mysql.lua).
 */
#include "mysql_int.h"
#include "mysql_params.h"

#include <errmsg.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- answering the caller ------------------------------------------------ */

static int fh_mysql__push_error(lua_State *co, fh_mysql_conn *c) {
  lua_pushnil(co);
  lua_pushstring(co, c->err);
  lua_pushinteger(co, (lua_Integer)c->err_no);
  lua_pushstring(co, c->sqlstate);
  return 4;
}

static void fh_mysql__push_conn(lua_State *co, fh_mysql_conn *c) {
  fh_mysql_conn **ud = lua_newuserdata(co, sizeof *ud);
  *ud = c;
  c->has_ud = 1;
  luaL_getmetatable(co, FH_MYSQL_CONN_MT);
  lua_setmetatable(co, -2);
}

/* A result set becomes an array of rows keyed by column name, values as
 * strings (NULL as the null sentinel), with the column names in `columns`. */
static int fh_mysql__push_result(lua_State *co, fh_mysql_conn *c) {
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

int fh_mysql_answer(lua_State *co, fh_mysql_conn *c, int was_connect) {
  if (c->err_no) return fh_mysql__push_error(co, c);
  if (was_connect) { fh_mysql__push_conn(co, c); return 1; }
  return fh_mysql__push_result(co, c);
}

/* ---- Lua: connections ---------------------------------------------------- */

/* NULL once finalized: during lua_close another finalizer (the pool's) may
 * still reach a connection whose own __gc already ran. */
static fh_mysql_conn *fh_mysql__check(lua_State *L) {
  fh_mysql_conn **ud = luaL_checkudata(L, 1, FH_MYSQL_CONN_MT);
  return *ud;
}

static fh_mysql_conn *fh_mysql__check_open(lua_State *L) {
  fh_mysql_conn *c = fh_mysql__check(L);
  if (!c || c->closed) luaL_error(L, "the connection is closed");
  return c;
}

static const char *fh_mysql__opt_string(lua_State *L, int t, const char *k, const char *dflt) {
  /* The string stays referenced by the options table (argument 1). */
  lua_getfield(L, t, k);
  if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING)
    luaL_error(L, "connect: option '%s' must be a string", k);
  const char *v = lua_isnil(L, -1) ? dflt : lua_tostring(L, -1);
  lua_pop(L, 1);
  return v;
}

static lua_Number fh_mysql__opt_number(lua_State *L, int t, const char *k, lua_Number dflt) {
  lua_getfield(L, t, k);
  lua_Number v = dflt;
  if (!lua_isnil(L, -1)) {
    if (!lua_isnumber(L, -1)) luaL_error(L, "connect: option '%s' must be a number", k);
    v = lua_tonumber(L, -1);
  }
  lua_pop(L, 1);
  return v;
}

static char *fh_mysql__dup(const char *s) { return s ? strdup(s) : NULL; }

/*
 * connect{host, port, user, password, database, timeout_ms} -> conn
 *                                         | nil, msg, errno, sqlstate
 * Yields.  A host name is resolved on the loop first.  The connection speaks
 * utf8mb4 over TCP, with LOAD DATA LOCAL and multi-statements off.
 */
static int l_mysql_connect(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  const char *host = fh_mysql__opt_string(L, 1, "host", "127.0.0.1");
  const char *user = fh_mysql__opt_string(L, 1, "user", NULL);
  const char *password = fh_mysql__opt_string(L, 1, "password", NULL);
  const char *database = fh_mysql__opt_string(L, 1, "database", NULL);
  lua_Number port = fh_mysql__opt_number(L, 1, "port", 3306);
  lua_Number tmo = fh_mysql__opt_number(L, 1, "timeout_ms", 5000);
  luaL_argcheck(L, port >= 1 && port <= 65535, 1, "port must be 1..65535");
  luaL_argcheck(L, tmo >= 1 && tmo <= 86400000, 1, "timeout_ms must be 1..86400000");
  luaL_argcheck(L, user != NULL, 1, "user is required");
  lua_State *co = fh_wait_begin(L);

  fh_mysql_conn *c = calloc(1, sizeof *c);
  if (!c) return luaL_error(L, "out of memory");
  c->host = fh_mysql__dup(host);
  c->user = fh_mysql__dup(user);
  c->password = fh_mysql__dup(password);
  c->database = fh_mysql__dup(database);
  c->port = (unsigned)port;
  c->m = mysql_init(NULL);
  if (!c->m || !c->host || !c->user || (password && !c->password) ||
      (database && !c->database)) {
    if (c->m) mysql_close(c->m);
    c->m = NULL;
    fh_mysql_conn_maybe_free(c);
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
  fh_mysql_conn_start_deadline(c, (unsigned)tmo);
  struct in_addr a4;
  struct in6_addr a6;
  if (inet_pton(AF_INET, host, &a4) == 1 || inet_pton(AF_INET6, host, &a6) == 1) {
    snprintf(c->addr, sizeof c->addr, "%s", host);
    fh_mysql_conn_start_connect(c);
  } else {
    /* The connector resolves names with a blocking getaddrinfo(): do it on
     * libuv's thread pool instead and hand it a numeric address. */
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    c->op = FH_MYSQL_RESOLVE;
    int rc = uv_getaddrinfo(fh_loop(), &c->resolve, fh_mysql_conn_on_resolved, host, NULL, &hints);
    if (rc != 0) {
      char msg[300];
      snprintf(msg, sizeof msg, "cannot resolve host '%s': %s", host, uv_strerror(rc));
      fh_mysql_conn_set_error(c, CR_UNKNOWN_HOST, "HY000", msg);
      fh_mysql_conn_done(c);
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
static int l_mysql_query(lua_State *L) {
  fh_mysql_conn *c = fh_mysql__check_open(L);
  size_t len;
  const char *sql = luaL_checklstring(L, 2, &len);
  lua_Number tmo = luaL_optnumber(L, 3, 0);
  luaL_argcheck(L, tmo >= 0 && tmo <= 86400000, 3, "timeout_ms must be 0..86400000");
  if (c->op != FH_MYSQL_IDLE)
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
  fh_mysql_conn_start_deadline(c, (unsigned)tmo);
  c->op = FH_MYSQL_QUERY;
  int st = mysql_real_query_start(&c->ret_int, c->m, c->sql, len);
  if (st) fh_mysql_conn_wait(c, st);
  else fh_mysql_conn_advance(c);
  if (nres >= 0) return nres;
  c->sync_nres = NULL;
  return lua_yield(L, 0);
}

static size_t fh_mysql__escape(void *ud, char *to, const char *from, size_t len) {
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
static int l_mysql_format(lua_State *L) {
  fh_mysql_conn *c = fh_mysql__check_open(L);
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
  char *out = fh_mysql_expand(sql, len, p, (size_t)n, fh_mysql__escape, c->m, &outlen, err, sizeof err);
  free(p);
  if (!out) return luaL_error(L, "%s", err);
  lua_pushlstring(L, out, outlen);
  free(out);
  return 1;
}

/* conn:alive() -> boolean: idle, connected, and the server did not hang up
 * meanwhile.  An idle socket that polls readable was closed by the server
 * (restart, wait_timeout, KILL): the connection is marked broken. */
static int l_mysql_alive(lua_State *L) {
  fh_mysql_conn *c = fh_mysql__check(L);
  int ok = c && c->m && c->connected && !c->broken && !c->closed && c->op == FH_MYSQL_IDLE;
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
static int l_mysql_close(lua_State *L) {
  fh_mysql_conn *c = fh_mysql__check(L);
  if (c && !c->closed) fh_mysql_conn_close(c);
  return 0;
}

/* conn:thread_id() -> the server's id for this connection (CONNECTION_ID()). */
static int l_mysql_thread_id(lua_State *L) {
  fh_mysql_conn *c = fh_mysql__check_open(L);
  lua_pushnumber(L, c->m ? (lua_Number)mysql_thread_id(c->m) : 0);
  return 1;
}

static int l_mysql_tostring(lua_State *L) {
  fh_mysql_conn *c = fh_mysql__check(L);
  if (!c) { lua_pushliteral(L, "flashhost.mysql.conn(closed)"); return 1; }
  const char *state = c->closed ? "closed" : c->broken ? "broken"
                    : c->op != FH_MYSQL_IDLE ? "busy" : "idle";
  lua_pushfstring(L, "flashhost.mysql.conn(%s:%d, %s)", c->host ? c->host : "?",
                  (int)c->port, state);
  return 1;
}

static int l_mysql_gc(lua_State *L) {
  fh_mysql_conn **ud = luaL_checkudata(L, 1, FH_MYSQL_CONN_MT);
  fh_mysql_conn *c = *ud;
  if (!c) return 0;
  *ud = NULL;
  c->has_ud = 0;
  /* Busy: fh_mysql_conn_done closes it when the operation ends. */
  if (c->op == FH_MYSQL_IDLE) {
    fh_mysql_conn_close(c);
    fh_mysql_conn_maybe_free(c);
  }
  return 0;
}

int luaopen_flashhost_mysql_driver(lua_State *L) {
  static const luaL_Reg conn_methods[] = {
    {"query", l_mysql_query}, {"format", l_mysql_format}, {"alive", l_mysql_alive}, {"close", l_mysql_close},
    {"thread_id", l_mysql_thread_id}, {"__tostring", l_mysql_tostring}, {"__gc", l_mysql_gc}, {NULL, NULL}};
  static const luaL_Reg fns[] = {{"connect", l_mysql_connect}, {NULL, NULL}};
  fh_new_class(L, FH_MYSQL_CONN_MT, conn_methods);
  lua_newtable(L);
  luaL_register(L, NULL, fns);
  fh_mysql_waiter_open(L);
  /* SQL NULL in results and parameters: a NULL light userdata, the same
   * value as cjson.null and redis.null, so rows encode to JSON as they are. */
  lua_pushlightuserdata(L, NULL);
  lua_setfield(L, -2, "null");
  return 1;
}

/* flashhost.http: the responder handed to the Lua dispatcher with each
 * request.  send() formats the status line and headers and hands the bytes to
 * the connection; a responder dropped without send() closes the connection. */
#include "http.h"
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <stdio.h>

#define FH_RESPONDER "flashhost.http.responder"

typedef struct { fh_conn *c; } fh_http_lua__responder;

static const char *fh_http_lua__status_text(int s) {
  switch (s) {
    case 200: return "OK"; case 201: return "Created"; case 202: return "Accepted";
    case 204: return "No Content"; case 301: return "Moved Permanently"; case 302: return "Found";
    case 304: return "Not Modified"; case 400: return "Bad Request"; case 401: return "Unauthorized";
    case 403: return "Forbidden"; case 404: return "Not Found"; case 405: return "Method Not Allowed";
    case 408: return "Request Timeout"; case 409: return "Conflict"; case 410: return "Gone";
    case 413: return "Payload Too Large"; case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Entity"; case 425: return "Too Early";
    case 429: return "Too Many Requests"; case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error"; case 502: return "Bad Gateway";
    case 503: return "Service Unavailable"; case 504: return "Gateway Timeout";
    default: return "Unknown";
  }
}

/* A header name or value must not smuggle a line break into the response. */
static int fh_http_lua__header_safe(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) if (s[i] == '\r' || s[i] == '\n') return 0;
  return 1;
}

typedef struct { char *p; size_t len, cap; } fh_http_lua__out;

static int fh_http_lua__out_add(fh_http_lua__out *o, const char *s, size_t n) {
  if (o->len + n > o->cap) {
    size_t cap = o->cap * 2 > o->len + n ? o->cap * 2 : o->len + n + 256;
    char *np = realloc(o->p, cap);
    if (!np) return -1;
    o->p = np; o->cap = cap;
  }
  memcpy(o->p + o->len, s, n);
  o->len += n;
  return 0;
}

/* responder:send(status, headers, body) -> true | nil, err */
static int l_http_send(lua_State *L) {
  fh_http_lua__responder *r = luaL_checkudata(L, 1, FH_RESPONDER);
  int status = (int)luaL_checkinteger(L, 2);
  luaL_argcheck(L, status >= 100 && status <= 999, 2, "bad status");
  size_t blen = 0;
  const char *body = luaL_optlstring(L, 4, "", &blen);
  if (!r->c) return fh_push_error(L, "already answered");
  fh_conn *c = r->c;
  r->c = NULL;

  fh_http_lua__out o = {malloc(blen + 512), 0, blen + 512};
  int ok = o.p != NULL;
  char line[160];
  int n = snprintf(line, sizeof line, "HTTP/1.1 %d %s\r\nServer: flashhost\r\n", status,
                   fh_http_lua__status_text(status));
  ok = ok && fh_http_lua__out_add(&o, line, (size_t)n) == 0;
  int has_type = 0;
  if (lua_istable(L, 3)) {
    lua_pushnil(L);
    while (ok && lua_next(L, 3)) {
      size_t kl, vl;
      /* only string keys; lua_tolstring on a number key would confuse lua_next */
      if (lua_type(L, -2) == LUA_TSTRING && (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER)) {
        const char *k = lua_tolstring(L, -2, &kl);
        lua_pushvalue(L, -1);
        const char *v = lua_tolstring(L, -1, &vl);
        if (fh_http_lua__header_safe(k, kl) && fh_http_lua__header_safe(v, vl)) {
          if (kl == 12 && strncasecmp(k, "content-type", 12) == 0) has_type = 1;
          ok = fh_http_lua__out_add(&o, k, kl) == 0 && fh_http_lua__out_add(&o, ": ", 2) == 0 &&
               fh_http_lua__out_add(&o, v, vl) == 0 && fh_http_lua__out_add(&o, "\r\n", 2) == 0;
        }
        lua_pop(L, 1);
      }
      lua_pop(L, 1);
    }
  }
  if (ok && !has_type) ok = fh_http_lua__out_add(&o, "Content-Type: application/json\r\n", 32) == 0;
  n = snprintf(line, sizeof line, "Content-Length: %zu\r\n%s\r\n", blen,
               fh_conn_closing_after(c) ? "Connection: close\r\n" : "");
  ok = ok && fh_http_lua__out_add(&o, line, (size_t)n) == 0 && fh_http_lua__out_add(&o, body, blen) == 0;
  if (!ok) {
    free(o.p);
    fh_conn_release(c);
    return fh_push_error(L, "out of memory");
  }
  fh_conn_respond(c, o.p, o.len);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_http_responder_gc(lua_State *L) {
  fh_http_lua__responder *r = luaL_checkudata(L, 1, FH_RESPONDER);
  if (r->c) { fh_conn_release(r->c); r->c = NULL; }
  return 0;
}

void fh_http_push_responder(lua_State *L, fh_conn *c) {
  fh_http_lua__responder *r = lua_newuserdata(L, sizeof *r);
  r->c = c;
  fh_conn_hold(c);
  luaL_getmetatable(L, FH_RESPONDER);
  lua_setmetatable(L, -2);
}

static int l_http_limits(lua_State *L) {
  const fh_http_limits *lim = fh_http_limits_get();
  lua_createtable(L, 0, 4);
  lua_pushnumber(L, (lua_Number)lim->max_header); lua_setfield(L, -2, "max_header");
  lua_pushnumber(L, (lua_Number)lim->max_body); lua_setfield(L, -2, "max_body");
  lua_pushnumber(L, (lua_Number)lim->read_timeout); lua_setfield(L, -2, "read_timeout_ms");
  lua_pushnumber(L, (lua_Number)lim->idle_timeout); lua_setfield(L, -2, "idle_timeout_ms");
  return 1;
}

int luaopen_flashhost_http(lua_State *L) {
  static const luaL_Reg methods[] = {{"send", l_http_send}, {"__gc", l_http_responder_gc}, {NULL, NULL}};
  fh_new_class(L, FH_RESPONDER, methods);
  static const luaL_Reg fns[] = {{"limits", l_http_limits}, {NULL, NULL}};
  lua_newtable(L);
  luaL_register(L, NULL, fns);
  return 1;
}

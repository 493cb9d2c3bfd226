/* Helpers shared by the Lua bindings. */
#include "fh.h"
#include <stdarg.h>
#include <stdio.h>

/* nil, the formatted message, and the kind when there is one. */
static int fh_luautil__fail(lua_State *L, const char *kind, const char *fmt, va_list ap) {
  char buf[512];
  vsnprintf(buf, sizeof buf, fmt, ap);
  lua_pushnil(L);
  lua_pushstring(L, buf);
  if (!kind) return 2;
  lua_pushstring(L, kind);
  return 3;
}

int fh_push_fail(lua_State *L, const char *kind, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = fh_luautil__fail(L, kind, fmt, ap);
  va_end(ap);
  return n;
}

int fh_push_error(lua_State *L, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = fh_luautil__fail(L, NULL, fmt, ap);
  va_end(ap);
  return n;
}

void fh_new_class(lua_State *L, const char *name, const luaL_Reg *methods) {
  if (luaL_newmetatable(L, name)) {
    lua_newtable(L);
    luaL_register(L, NULL, methods);
    lua_setfield(L, -2, "__index");
    /* __gc and __tostring live in the methods list too; copy them up. */
    for (const luaL_Reg *m = methods; m->name; m++) {
      if (m->name[0] == '_' && m->name[1] == '_') {
        lua_pushcfunction(L, m->func);
        lua_setfield(L, -2, m->name);
      }
    }
  }
  lua_pop(L, 1);
}

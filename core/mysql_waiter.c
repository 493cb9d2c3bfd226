/*
 * flashhost.mysql.driver: the pool's waiter.
 *
 * A waiter suspends one task until another task wakes it or time runs out.
 * The pool (core/lua/flashhost/mysql.lua) queues its callers on them: a
 * caller waiting for a free connection must be resumed through the
 * scheduler.  The wait itself is an fh_wait (core/sched.c); a generation
 * stop does not cut it short (pool_timeout_ms bounds it).
 *
 *   waiter()          -> w
 *   w:wait(ms)        -> true, values given to wake | nil, "timeout", "timeout"
 *   w:wake(...)       -> true if a task was waiting (it gets true, ...), else false
 */
#include "mysql_int.h"
#include <stdlib.h>

#define FH_MYSQL__WAITER_MT "flashhost.mysql.waiter"

typedef struct {
  fh_wait *w;    /* the wait in progress; NULL when nobody waits */
} fh_mysql__waiter;

/* Deadline, or the state is closing: the wait is over, forget it. */
static int fh_mysql__waiter_cut(fh_wait *w, lua_State *co, int why) {
  fh_mysql__waiter *wt = fh_wait_data(w);
  wt->w = NULL;
  return co ? fh_wait_push_reason(co, why) : 0;
}

static int l_mysql_waiter(lua_State *L) {
  fh_mysql__waiter *wt = lua_newuserdata(L, sizeof *wt);
  wt->w = NULL;
  luaL_getmetatable(L, FH_MYSQL__WAITER_MT);
  lua_setmetatable(L, -2);
  return 1;
}

static int l_mysql_waiter_wait(lua_State *L) {
  fh_mysql__waiter *wt = luaL_checkudata(L, 1, FH_MYSQL__WAITER_MT);
  lua_Number ms = luaL_checknumber(L, 2);
  luaL_argcheck(L, ms >= 0 && ms <= 86400000, 2, "must be 0..86400000");
  if (wt->w) return luaL_error(L, "somebody already waits on this waiter");
  /* The userdata is reachable from the waiting task's stack (argument 1),
   * so it outlives the wait; its __gc forgets a wait left at lua_close. */
  wt->w = fh_wait_start(L, ms, 1, NULL, fh_mysql__waiter_cut, wt);
  return lua_yield(L, 0);
}

static int l_mysql_waiter_wake(lua_State *L) {
  fh_mysql__waiter *wt = luaL_checkudata(L, 1, FH_MYSQL__WAITER_MT);
  if (!wt->w) { lua_pushboolean(L, 0); return 1; }
  int n = lua_gettop(L) - 1;
  fh_wait *w = wt->w;
  if (!lua_checkstack(fh_wait_task(w), n + 1)) return luaL_error(L, "too many values");
  wt->w = NULL;
  lua_State *co = fh_wait_take(w);
  lua_pushboolean(co, 1);
  lua_xmove(L, co, n);
  fh_wait_resume(co, n + 1);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_mysql_waiter_gc(lua_State *L) {
  fh_mysql__waiter *wt = luaL_checkudata(L, 1, FH_MYSQL__WAITER_MT);
  fh_wait_forget(wt->w);
  wt->w = NULL;
  return 0;
}

void fh_mysql_waiter_open(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"wait", l_mysql_waiter_wait}, {"wake", l_mysql_waiter_wake}, {"__gc", l_mysql_waiter_gc}, {NULL, NULL}};
  fh_new_class(L, FH_MYSQL__WAITER_MT, methods);
  lua_pushcfunction(L, l_mysql_waiter);
  lua_setfield(L, -2, "waiter");
}

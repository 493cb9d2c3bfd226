/* flashhost.timer: timed waits for tasks.
 *
 *   sleep(ms)        -> true | nil, "stopping", "stopping"
 *   park([ms [, through_stop]])
 *                    -> the values of unpark | nil, "timeout", "timeout"
 *                       | nil, "stopping", "stopping"
 *   unpark(co, ...)  -> true if co was parked and is now woken, false otherwise
 *
 * park suspends the running task until another task unparks it, its deadline
 * passes, or its generation stops; it is what flashhost.event is built on.
 * unpark of a coroutine that is not parked (it timed out, it ended, it waits
 * on something else) does nothing: a late wake-up can never resume a task
 * that is in the middle of another wait.  A generation that stops wakes its
 * sleepers and parked tasks early with nil, "stopping", so periodic jobs and
 * waiters end promptly; a park `through_stop` is not woken by the stop: it
 * waits for work already under way (a request's share of a Redis call in
 * flight), which ends on its own, and must then still be answered.
 *
 * Both are plain fh_waits (core/sched.c); this file only adds the answers and
 * the map that lets unpark find a parked task. */
#include "gen.h"
#include <stdlib.h>

/* Parked tasks are found by unpark through the registry table "fh.parked"
 * (thread -> lightuserdata of its fh_wait); an ended wait leaves it. */
static void fh_timer__parked_set(lua_State *co, fh_wait *w) {
  lua_getfield(co, LUA_REGISTRYINDEX, "fh.parked");
  if (lua_isnil(co, -1)) {
    lua_pop(co, 1);
    lua_newtable(co);
    lua_pushvalue(co, -1);
    lua_setfield(co, LUA_REGISTRYINDEX, "fh.parked");
  }
  lua_pushthread(co);
  if (w) lua_pushlightuserdata(co, w); else lua_pushnil(co);
  lua_rawset(co, -3);
  lua_pop(co, 1);
}

static fh_wait *fh_timer__parked_get(lua_State *L, int idx) {
  lua_getfield(L, LUA_REGISTRYINDEX, "fh.parked");
  if (lua_isnil(L, -1)) { lua_pop(L, 1); return NULL; }
  lua_pushvalue(L, idx);
  lua_rawget(L, -2);
  fh_wait *w = lua_touserdata(L, -1);
  lua_pop(L, 2);
  return w;
}

/* A sleep's deadline is its success. */
static int fh_timer__sleep_cut(fh_wait *w, lua_State *co, int why) {
  (void)w;
  if (!co) return 0;
  if (why == FH_WAIT_TIMEOUT) { lua_pushboolean(co, 1); return 1; }
  return fh_wait_push_reason(co, why);
}

/* The parked task's map entry goes with the wait.  With FH_WAIT_GONE the
 * state is closing and the map with it. */
static int fh_timer__park_cut(fh_wait *w, lua_State *co, int why) {
  (void)w;
  if (!co) return 0;
  fh_timer__parked_set(co, NULL);
  return fh_wait_push_reason(co, why);
}

static int l_timer_sleep(lua_State *L) {
  lua_Number ms = luaL_checknumber(L, 1);
  luaL_argcheck(L, ms >= 0, 1, "must be >= 0");
  if (!fh_wait_start(L, ms, 0, NULL, fh_timer__sleep_cut, NULL)) return fh_wait_push_reason(L, FH_WAIT_STOPPING);
  return lua_yield(L, 0);
}

static int l_timer_park(lua_State *L) {
  lua_Number ms = luaL_optnumber(L, 1, -1);
  luaL_argcheck(L, lua_isnoneornil(L, 1) || ms >= 0, 1, "must be >= 0 or nil");
  fh_wait *w = fh_wait_start(L, lua_isnoneornil(L, 1) ? -1 : ms, lua_toboolean(L, 2), NULL,
                             fh_timer__park_cut, NULL);
  if (!w) return fh_wait_push_reason(L, FH_WAIT_STOPPING);
  fh_timer__parked_set(L, w);
  return lua_yield(L, 0);
}

static int l_timer_unpark(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTHREAD);
  fh_wait *w = fh_timer__parked_get(L, 1);
  if (!w) {
    lua_pushboolean(L, 0);
    return 1;
  }
  lua_State *co = lua_tothread(L, 1);
  int n = lua_gettop(L) - 1;
  luaL_checkstack(co, n + 1, "too many values for unpark");
  fh_timer__parked_set(co, NULL);
  fh_wait_take(w);
  lua_xmove(L, co, n);
  fh_wait_resume(co, n);
  lua_pushboolean(L, 1);
  return 1;
}

int luaopen_flashhost_timer(lua_State *L) {
  static const luaL_Reg fns[] = {
    {"sleep", l_timer_sleep}, {"park", l_timer_park}, {"unpark", l_timer_unpark}, {NULL, NULL}};
  lua_newtable(L);
  luaL_register(L, NULL, fns);
  return 1;
}

/* flashhost.timer: timed waits for tasks.
 *
 *   sleep(ms)        -> true | nil, "stopping"
 *   park([ms [, through_stop]])
 *                    -> the values of unpark | nil, "timeout" | nil, "stopping"
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
 * flight), which ends on its own, and must then still be answered. */
#include "gen.h"
#include <stdlib.h>

enum { FH__SLEEP, FH__PARK };

typedef struct fh__sleep {
  uv_timer_t timer;
  lua_State *co;
  fh_gen *gen;
  int kind;
  int through_stop;
  struct fh__sleep *prev, *next;
} fh__sleep;

static fh__sleep *fh__sleepers;

/* Parked coroutines are found by unpark through the registry table
 * "fh.parked" (thread -> lightuserdata of their fh__sleep). */
static void fh__parked_set(lua_State *co, fh__sleep *s) {
  lua_getfield(co, LUA_REGISTRYINDEX, "fh.parked");
  if (lua_isnil(co, -1)) {
    lua_pop(co, 1);
    lua_newtable(co);
    lua_pushvalue(co, -1);
    lua_setfield(co, LUA_REGISTRYINDEX, "fh.parked");
  }
  lua_pushthread(co);
  if (s) lua_pushlightuserdata(co, s); else lua_pushnil(co);
  lua_rawset(co, -3);
  lua_pop(co, 1);
}

static fh__sleep *fh__parked_get(lua_State *L, int idx) {
  lua_getfield(L, LUA_REGISTRYINDEX, "fh.parked");
  if (lua_isnil(L, -1)) { lua_pop(L, 1); return NULL; }
  lua_pushvalue(L, idx);
  lua_rawget(L, -2);
  fh__sleep *s = lua_touserdata(L, -1);
  lua_pop(L, 2);
  return s;
}

static void fh__unlink(fh__sleep *s) {
  if (s->prev) s->prev->next = s->next; else fh__sleepers = s->next;
  if (s->next) s->next->prev = s->prev;
}

static void fh__free_cb(uv_handle_t *h) { free(h->data); }

/* Ends a wait: the record goes, the coroutine is resumed with `nres` values
 * the caller already pushed on it. */
static void fh__end_wait(fh__sleep *s, int nres) {
  lua_State *co = s->co;
  fh__unlink(s);
  if (s->kind == FH__PARK) fh__parked_set(co, NULL);
  uv_timer_stop(&s->timer);
  uv_close((uv_handle_t *)&s->timer, fh__free_cb);
  fh_wait_resume(co, nres);
}

static void fh__wake_early(fh__sleep *s) {
  lua_pushnil(s->co);
  lua_pushliteral(s->co, "stopping");
  fh__end_wait(s, 2);
}

static void fh__on_timer(uv_timer_t *t) {
  fh__sleep *s = t->data;
  if (s->kind == FH__SLEEP) {
    lua_pushboolean(s->co, 1);
    fh__end_wait(s, 1);
  } else {
    lua_pushnil(s->co);
    lua_pushliteral(s->co, "timeout");
    fh__end_wait(s, 2);
  }
}

void fh_timer_wake_gen(fh_gen *g) {
  fh__sleep *s = fh__sleepers;
  while (s) {
    fh__sleep *next = s->next;
    if (s->gen == g && !s->through_stop) fh__wake_early(s);
    s = next;
  }
}

/* Starts a wait of `kind` for the running task; ms < 0 means no deadline.
 * Returns lua_yield's value, or pushes nil, "stopping" at once when the
 * generation is already stopping. */
static int fh__wait(lua_State *L, int kind, lua_Number ms, int through_stop) {
  fh_gen *g = fh_gen_of(L);
  if (fh_gen_stopping(g) && !through_stop) {
    lua_pushnil(L);
    lua_pushliteral(L, "stopping");
    return 2;
  }
  lua_State *co = fh_wait_begin(L);
  fh__sleep *s = calloc(1, sizeof *s);
  if (!s) return luaL_error(L, "out of memory");
  s->co = co;
  s->gen = g;
  s->kind = kind;
  s->through_stop = through_stop;
  s->timer.data = s;
  uv_timer_init(fh_loop(), &s->timer);
  s->next = fh__sleepers;
  if (fh__sleepers) fh__sleepers->prev = s;
  fh__sleepers = s;
  if (kind == FH__PARK) fh__parked_set(co, s);
  if (ms >= 0) {
    /* the loop caches "now" per iteration; refresh it so a wait is never short */
    uv_update_time(fh_loop());
    uv_timer_start(&s->timer, fh__on_timer, (uint64_t)ms, 0);
  }
  return lua_yield(L, 0);
}

static int l_timer_sleep(lua_State *L) {
  lua_Number ms = luaL_checknumber(L, 1);
  luaL_argcheck(L, ms >= 0, 1, "must be >= 0");
  return fh__wait(L, FH__SLEEP, ms, 0);
}

static int l_timer_park(lua_State *L) {
  lua_Number ms = luaL_optnumber(L, 1, -1);
  luaL_argcheck(L, lua_isnoneornil(L, 1) || ms >= 0, 1, "must be >= 0 or nil");
  return fh__wait(L, FH__PARK, lua_isnoneornil(L, 1) ? -1 : ms, lua_toboolean(L, 2));
}

static int l_timer_unpark(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTHREAD);
  fh__sleep *s = fh__parked_get(L, 1);
  if (!s) {
    lua_pushboolean(L, 0);
    return 1;
  }
  int n = lua_gettop(L) - 1;
  luaL_checkstack(s->co, n + 1, "too many values for unpark");
  lua_xmove(L, s->co, n);
  fh__end_wait(s, n);
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

/* flashhost.timer: sleep(ms) for tasks.  A generation that stops wakes its
 * sleepers early with nil, "stopping" so periodic jobs end promptly. */
#include "gen.h"
#include <stdlib.h>

typedef struct fh__sleep {
  uv_timer_t timer;
  lua_State *co;
  fh_gen *gen;
  struct fh__sleep *prev, *next;
} fh__sleep;

static fh__sleep *fh__sleepers;

static void fh__unlink(fh__sleep *s) {
  if (s->prev) s->prev->next = s->next; else fh__sleepers = s->next;
  if (s->next) s->next->prev = s->prev;
}

static void fh__free_cb(uv_handle_t *h) { free(h->data); }

static void fh__finish(fh__sleep *s, int woke_early) {
  lua_State *co = s->co;
  fh__unlink(s);
  uv_timer_stop(&s->timer);
  uv_close((uv_handle_t *)&s->timer, fh__free_cb);
  if (woke_early) {
    lua_pushnil(co);
    lua_pushliteral(co, "stopping");
    fh_wait_resume(co, 2);
  } else {
    lua_pushboolean(co, 1);
    fh_wait_resume(co, 1);
  }
}

static void fh__on_timer(uv_timer_t *t) { fh__finish(t->data, 0); }

void fh_timer_wake_gen(fh_gen *g) {
  fh__sleep *s = fh__sleepers;
  while (s) {
    fh__sleep *next = s->next;
    if (s->gen == g) fh__finish(s, 1);
    s = next;
  }
}

/* sleep(ms) -> true | nil, "stopping" */
static int l_sleep(lua_State *L) {
  lua_Number ms = luaL_checknumber(L, 1);
  luaL_argcheck(L, ms >= 0, 1, "must be >= 0");
  fh_gen *g = fh_gen_of(L);
  if (fh_gen_stopping(g)) {
    lua_pushnil(L);
    lua_pushliteral(L, "stopping");
    return 2;
  }
  lua_State *co = fh_wait_begin(L);
  fh__sleep *s = calloc(1, sizeof *s);
  if (!s) return luaL_error(L, "out of memory");
  s->co = co;
  s->gen = g;
  s->timer.data = s;
  uv_timer_init(fh_loop(), &s->timer);
  s->next = fh__sleepers;
  if (fh__sleepers) fh__sleepers->prev = s;
  fh__sleepers = s;
  /* the loop caches "now" per iteration; refresh it so a sleep is never short */
  uv_update_time(fh_loop());
  uv_timer_start(&s->timer, fh__on_timer, (uint64_t)ms, 0);
  return lua_yield(L, 0);
}

int luaopen_flashhost_timer(lua_State *L) {
  static const luaL_Reg fns[] = {{"sleep", l_sleep}, {NULL, NULL}};
  lua_newtable(L);
  luaL_register(L, NULL, fns);
  return 1;
}

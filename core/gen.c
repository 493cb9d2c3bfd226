/*
 * Generations.  A hot reload never patches a running Lua state: it builds a
 * whole new one, boots the app there (load + start hook), and only when that
 * succeeded does the worker switch new requests to it.  The old generation
 * keeps running the requests it already has; when its last task ends it
 * retires (on_retired) and is closed.  A generation that fails to boot
 * retires and is closed the same way, and the old one never notices.
 *
 * Waits (fh_wait, core/sched.c) sit on their generation's list: a stop cuts
 * them short through each binding's cancel hook, so this file knows no
 * binding by name.
 */
#include "gen.h"
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <limits.h>

enum { FH_GEN_BOOTING, FH_GEN_LIVE, FH_GEN_STOPPING, FH_GEN_CLOSED };

struct fh_gen {
  lua_State *L;
  int id;
  int state;
  int inflight;
  int runtime_ref;
  fh_gen_boot_cb on_boot;
  fh_gen_retired_cb on_retired;
  uv_timer_t retire_timer; /* fires on_retired outside of any Lua call */
  fh_wait *waits;          /* the waits of its tasks (core/sched.c links them) */
};

static fh_gen *fh_gen__current;

static void fh_gen__free_cb(uv_handle_t *h) { free(h->data); }
static int fh_gen__next_id = 1;

fh_gen *fh_gen_current(void) { return fh_gen__current; }
void fh_gen_set_current(fh_gen *g) { fh_gen__current = g; }
lua_State *fh_gen_L(fh_gen *g) { return g->L; }
int fh_gen_id(fh_gen *g) { return g->id; }
int fh_gen_booting(fh_gen *g) { return g->on_boot != NULL; }
int fh_gen_inflight(fh_gen *g) { return g->inflight; }
int fh_gen_stopping(fh_gen *g) { return g->state >= FH_GEN_STOPPING; }
int fh_gen_accepts(fh_gen *g) { return g && g->state != FH_GEN_CLOSED; }
fh_wait **fh_gen_waits(fh_gen *g) { return &g->waits; }

fh_gen *fh_gen_of(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, "fh.gen");
  fh_gen *g = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return g;
}

static int fh_gen__load_embedded(lua_State *L) {
  const fh_embedded_t *e = lua_touserdata(L, lua_upvalueindex(1));
  if (luaL_loadbuffer(L, e->src, e->len, e->chunkname) != 0) return lua_error(L);
  lua_pushstring(L, e->name);
  lua_call(L, 1, 1);
  return 1;
}

static void fh_gen__preload(lua_State *L) {
  static const luaL_Reg cmods[] = {
    {"flashhost.core", luaopen_flashhost_core},
    {"flashhost.timer", luaopen_flashhost_timer},
    {"flashhost.http", luaopen_flashhost_http},
    {"flashhost.redis.driver", luaopen_flashhost_redis_driver},
    {"flashhost.kafka.driver", luaopen_flashhost_kafka_driver},
    {"flashhost.mysql.driver", luaopen_flashhost_mysql_driver},
    {"flashhost.jwt", luaopen_flashhost_jwt},
    {"flashhost.crypto", luaopen_flashhost_crypto},
    {"flashhost.metrics.store", luaopen_flashhost_metrics_store},
    {NULL, NULL}};
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
  for (const luaL_Reg *m = cmods; m->name; m++) {
    lua_pushcfunction(L, m->func);
    lua_setfield(L, -2, m->name);
  }
  for (const fh_embedded_t *e = fh_embedded; e->name; e++) {
    lua_pushlightuserdata(L, (void *)e);
    lua_pushcclosure(L, fh_gen__load_embedded, 1);
    lua_setfield(L, -2, e->name);
  }
  lua_pop(L, 2);
}

/* The app's folder goes first on package.path so `require "lib.x"` finds
 * app/lib/x.lua, and a reload re-reads every module from disk. */
static void fh_gen__set_path(lua_State *L, const char *app_path) {
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%s", app_path);
  char *slash = strrchr(dir, '/');
  if (slash) *slash = 0; else strcpy(dir, ".");
  const char *extra = getenv("FH_LUA_PATH");
  lua_getglobal(L, "package");
  lua_pushfstring(L, "%s%s%s/?.lua;%s/?/init.lua;", extra ? extra : "", extra ? ";" : "", dir, dir);
  lua_getfield(L, -2, "path");
  lua_concat(L, 2);
  lua_setfield(L, -2, "path");
  lua_pop(L, 1);
}

fh_gen *fh_gen_new(const char *app_path, fh_gen_boot_cb on_boot) {
  fh_gen *g = calloc(1, sizeof *g);
  if (!g) return NULL;
  g->L = luaL_newstate();
  if (!g->L) { free(g); return NULL; }
  g->id = fh_gen__next_id++;
  g->state = FH_GEN_BOOTING;
  g->on_boot = on_boot;
  uv_timer_init(fh_loop(), &g->retire_timer);
  g->retire_timer.data = g;

  lua_State *L = g->L;
  luaL_openlibs(L);
  lua_pushlightuserdata(L, g);
  lua_setfield(L, LUA_REGISTRYINDEX, "fh.gen");
  lua_newtable(L);
  lua_setfield(L, LUA_REGISTRYINDEX, "fh.tasks");
  fh_gen__preload(L);
  fh_gen__set_path(L, app_path);

  lua_getglobal(L, "require");
  lua_pushliteral(L, "flashhost.runtime");
  if (fh_pcall(L, 1, 1) != 0) {
    fh_log(FH_LOG_ERROR, "cannot load the runtime facade");
    lua_close(L);
    uv_close((uv_handle_t *)&g->retire_timer, fh_gen__free_cb);
    return NULL;
  }
  g->runtime_ref = luaL_ref(L, LUA_REGISTRYINDEX);

  fh_gen_push_runtime(g, "boot");
  lua_pushstring(L, app_path);
  lua_pushinteger(L, g->id);
  fh_task_spawn(g, L, 2);
  return g;
}

void fh_gen_push_runtime(fh_gen *g, const char *name) {
  lua_rawgeti(g->L, LUA_REGISTRYINDEX, g->runtime_ref);
  lua_getfield(g->L, -1, name);
  lua_remove(g->L, -2);
}

void fh_gen_booted(fh_gen *g, int ok, const char *err) {
  if (g->state == FH_GEN_BOOTING && ok) g->state = FH_GEN_LIVE;
  if (g->on_boot) {
    fh_gen_boot_cb cb = g->on_boot;
    g->on_boot = NULL;
    cb(g, ok, err);
  }
}

void fh_gen_task_started(fh_gen *g) { g->inflight++; }

static void fh_gen__retire(uv_timer_t *t) {
  fh_gen *g = t->data;
  if (g->inflight > 0 || g->state != FH_GEN_STOPPING) return;
  g->state = FH_GEN_CLOSED;
  if (g->on_retired) g->on_retired(g);
}

void fh_gen_task_done(fh_gen *g) {
  g->inflight--;
  if (g->inflight == 0 && g->state == FH_GEN_STOPPING)
    uv_timer_start(&g->retire_timer, fh_gen__retire, 0, 0);
}

void fh_gen_stop(fh_gen *g, fh_gen_retired_cb on_retired) {
  if (g->state >= FH_GEN_STOPPING) return;
  g->state = FH_GEN_STOPPING;
  g->on_retired = on_retired;
  if (g->on_boot) fh_gen_booted(g, 0, "stopped before it finished booting");
  fh_waits_stop(g);
  /* The stop hook runs as one more task; the generation retires after it. */
  fh_gen_push_runtime(g, "stop");
  fh_task_spawn(g, g->L, 0);
  if (g->inflight == 0) uv_timer_start(&g->retire_timer, fh_gen__retire, 0, 0);
}

void fh_gen_free(fh_gen *g) {
  if (fh_gen__current == g) fh_gen__current = NULL;
  /* Normally empty (a waiting task is in flight); after a forced shutdown
   * the records must not outlive the state their tasks belong to. */
  fh_waits_forget(g);
  if (g->L) lua_close(g->L);
  g->L = NULL;
  uv_timer_stop(&g->retire_timer);
  uv_close((uv_handle_t *)&g->retire_timer, fh_gen__free_cb);
}

/*
 * Coroutine scheduling: tasks and the single resume path.
 *
 * A task is a coroutine started by the runtime (a request, a periodic job,
 * an app's start hook).  It is pinned in the registry table "fh.tasks" from
 * start to end, so a binding waiting on I/O only needs the raw lua_State *.
 * Every resume goes through fh__run(), which also notices the end of a task
 * and tells its generation (so a retiring generation knows when it drained).
 */
#include "fh.h"
#include "gen.h"
#include <stdlib.h>
#include <string.h>

typedef struct { lua_State *co; int nargs; } fh__ready;

static int fh__depth;            /* > 0 while Lua code runs below us */
static fh__ready *fh__queue;     /* resumes deferred until Lua returns */
static size_t fh__qlen, fh__qcap;
static uv_idle_t fh__idle;
static int fh__idle_ready;

static void fh__task_end(lua_State *co) {
  fh_gen *g = fh_gen_of(co);
  lua_State *L = fh_gen_L(g);
  lua_getfield(L, LUA_REGISTRYINDEX, "fh.tasks");
  lua_pushthread(co);
  lua_xmove(co, L, 1);
  lua_pushnil(L);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  fh_gen_task_done(g);
}

static void fh__run(lua_State *co, int nargs) {
  fh__depth++;
  int st = lua_resume(co, nargs);
  fh__depth--;
  if (st == LUA_YIELD) return; /* waiting on I/O; a binding will resume it */
  if (st != 0) {
    /* Task bodies run under xpcall in the Lua facade, so this is a failure of
     * the facade itself or out-of-memory: log it, never bring the worker down. */
    const char *msg = lua_tostring(co, -1);
    fh_log(FH_LOG_ERROR, "task failed: %s", msg ? msg : "(non-string error)");
  }
  lua_settop(co, 0);
  fh__task_end(co);
}

static void fh__drain(uv_idle_t *h) {
  /* Take the queue: resumes below may defer more work. */
  while (fh__qlen > 0) {
    fh__ready *q = fh__queue;
    size_t n = fh__qlen;
    fh__queue = NULL; fh__qlen = 0; fh__qcap = 0;
    for (size_t i = 0; i < n; i++) fh__run(q[i].co, q[i].nargs);
    free(q);
  }
  uv_idle_stop(h);
}

static void fh__defer(lua_State *co, int nargs) {
  if (fh__qlen == fh__qcap) {
    size_t cap = fh__qcap ? fh__qcap * 2 : 16;
    fh__ready *nq = realloc(fh__queue, cap * sizeof *nq);
    if (!nq) abort(); /* cannot lose a wake-up: that would hang a request forever */
    fh__queue = nq; fh__qcap = cap;
  }
  fh__queue[fh__qlen++] = (fh__ready){co, nargs};
  uv_idle_start(&fh__idle, fh__drain);
}

void fh_sched_init(uv_loop_t *loop) {
  uv_idle_init(loop, &fh__idle);
  fh__idle_ready = 1;
}

void fh_sched_close(void) {
  if (fh__idle_ready) uv_close((uv_handle_t *)&fh__idle, NULL);
  fh__idle_ready = 0;
  free(fh__queue);
  fh__queue = NULL; fh__qlen = fh__qcap = 0;
}

static int fh__spawn(fh_gen *g, lua_State *from, int nargs, int now) {
  if (!fh_gen_accepts(g)) { lua_pop(from, nargs + 1); return -1; }
  lua_State *co = lua_newthread(from);
  lua_getfield(from, LUA_REGISTRYINDEX, "fh.tasks");
  lua_pushvalue(from, -2);
  lua_pushboolean(from, 1);
  lua_rawset(from, -3);
  lua_pop(from, 2);
  lua_xmove(from, co, nargs + 1);
  fh_gen_task_started(g);
  if (fh__depth > 0 && !now) fh__defer(co, nargs);
  else fh__run(co, nargs);
  return 0;
}

int fh_task_spawn(fh_gen *g, lua_State *from, int nargs) { return fh__spawn(g, from, nargs, 0); }

/* From a running task: the new task runs until its first yield before this
 * returns (a nested resume, as coroutine.resume does), so I/O it starts is
 * sent before the caller's next step, e.g. before a response is written. */
int fh_task_spawn_now(fh_gen *g, lua_State *from, int nargs) { return fh__spawn(g, from, nargs, 1); }

lua_State *fh_wait_begin(lua_State *L) {
  if (!lua_isyieldable(L) || lua_pushthread(L)) {
    luaL_error(L, "this call does I/O and must run inside a flashhost task (a handler, a hook or flashhost.spawn)");
  }
  lua_pop(L, 1);
  return L;
}

void fh_wait_resume(lua_State *co, int nres) {
  if (fh__depth > 0) fh__defer(co, nres);
  else fh__run(co, nres);
}

static int fh__traceback(lua_State *L) {
  luaL_traceback(L, L, lua_tostring(L, 1), 1);
  return 1;
}

int fh_pcall(lua_State *L, int nargs, int nres) {
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, fh__traceback);
  lua_insert(L, base);
  fh__depth++;
  int st = lua_pcall(L, nargs, nres, base);
  fh__depth--;
  lua_remove(L, base);
  if (st != 0) {
    fh_log(FH_LOG_ERROR, "%s", lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  return st;
}

/*
 * Coroutine scheduling: tasks and the single resume path.
 *
 * A task is a coroutine started by the runtime (a request, a periodic job,
 * an app's start hook).  It is pinned in the registry table "fh.tasks" from
 * start to end, so a binding waiting on I/O only needs the raw lua_State *.
 * Every resume goes through fh_sched__run(), which also notices the end of a task
 * and tells its generation (so a stopping generation knows when it can retire).
 */
#include "fh.h"
#include "gen.h"
#include <stdlib.h>
#include <string.h>

typedef struct { lua_State *co; int nargs; } fh_sched__ready;

static int fh_sched__depth;            /* > 0 while Lua code runs below us */
static fh_sched__ready *fh_sched__queue;     /* resumes deferred until Lua returns */
static size_t fh_sched__qlen, fh_sched__qcap;
static uv_idle_t fh_sched__idle;
static int fh_sched__idle_ready;

static void fh_sched__task_end(lua_State *co) {
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

static void fh_sched__run(lua_State *co, int nargs) {
  fh_sched__depth++;
  int st = lua_resume(co, nargs);
  fh_sched__depth--;
  if (st == LUA_YIELD) return; /* waiting on I/O; a binding will resume it */
  if (st != 0) {
    /* Task bodies run under xpcall in the Lua facade, so this is a failure of
     * the facade itself or out-of-memory: log it, never bring the worker down. */
    const char *msg = lua_tostring(co, -1);
    fh_log(FH_LOG_ERROR, "task failed: %s", msg ? msg : "(non-string error)");
  }
  lua_settop(co, 0);
  fh_sched__task_end(co);
}

/* Runs the deferred resumes (the idle handle fires once Lua returned). */
static void fh_sched__run_deferred(uv_idle_t *h) {
  /* Take the queue: resumes below may defer more work. */
  while (fh_sched__qlen > 0) {
    fh_sched__ready *q = fh_sched__queue;
    size_t n = fh_sched__qlen;
    fh_sched__queue = NULL; fh_sched__qlen = 0; fh_sched__qcap = 0;
    for (size_t i = 0; i < n; i++) fh_sched__run(q[i].co, q[i].nargs);
    free(q);
  }
  uv_idle_stop(h);
}

static void fh_sched__defer(lua_State *co, int nargs) {
  if (fh_sched__qlen == fh_sched__qcap) {
    size_t cap = fh_sched__qcap ? fh_sched__qcap * 2 : 16;
    fh_sched__ready *nq = realloc(fh_sched__queue, cap * sizeof *nq);
    if (!nq) abort(); /* cannot lose a wake-up: that would hang a request forever */
    fh_sched__queue = nq; fh_sched__qcap = cap;
  }
  fh_sched__queue[fh_sched__qlen++] = (fh_sched__ready){co, nargs};
  uv_idle_start(&fh_sched__idle, fh_sched__run_deferred);
}

void fh_sched_init(uv_loop_t *loop) {
  uv_idle_init(loop, &fh_sched__idle);
  fh_sched__idle_ready = 1;
}

void fh_sched_close(void) {
  if (fh_sched__idle_ready) uv_close((uv_handle_t *)&fh_sched__idle, NULL);
  fh_sched__idle_ready = 0;
  free(fh_sched__queue);
  fh_sched__queue = NULL; fh_sched__qlen = fh_sched__qcap = 0;
}

static int fh_sched__spawn(fh_gen *g, lua_State *from, int nargs, int now) {
  if (!fh_gen_accepts(g)) { lua_pop(from, nargs + 1); return -1; }
  lua_State *co = lua_newthread(from);
  lua_getfield(from, LUA_REGISTRYINDEX, "fh.tasks");
  lua_pushvalue(from, -2);
  lua_pushboolean(from, 1);
  lua_rawset(from, -3);
  lua_pop(from, 2);
  lua_xmove(from, co, nargs + 1);
  fh_gen_task_started(g);
  if (fh_sched__depth > 0 && !now) fh_sched__defer(co, nargs);
  else fh_sched__run(co, nargs);
  return 0;
}

int fh_task_spawn(fh_gen *g, lua_State *from, int nargs) { return fh_sched__spawn(g, from, nargs, 0); }

/* From a running task: the new task runs until its first yield before this
 * returns (a nested resume, as coroutine.resume does), so I/O it starts is
 * sent before the caller's next step, e.g. before a response is written. */
int fh_task_spawn_now(fh_gen *g, lua_State *from, int nargs) { return fh_sched__spawn(g, from, nargs, 1); }

lua_State *fh_wait_begin(lua_State *L) {
  if (!lua_isyieldable(L) || lua_pushthread(L)) {
    luaL_error(L, "this call does I/O and must run inside a flashhost task (a handler, a hook or flashhost.spawn)");
  }
  lua_pop(L, 1);
  return L;
}

void fh_wait_resume(lua_State *co, int nres) {
  if (fh_sched__depth > 0) fh_sched__defer(co, nres);
  else fh_sched__run(co, nres);
}

static int fh_sched__traceback(lua_State *L) {
  luaL_traceback(L, L, lua_tostring(L, 1), 1);
  return 1;
}

int fh_pcall(lua_State *L, int nargs, int nres) {
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, fh_sched__traceback);
  lua_insert(L, base);
  fh_sched__depth++;
  int st = lua_pcall(L, nargs, nres, base);
  fh_sched__depth--;
  lua_remove(L, base);
  if (st != 0) {
    fh_log(FH_LOG_ERROR, "%s", lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  return st;
}

/* ---- timed waits ------------------------------------------------------------
 *
 * One record per suspended task, for every binding (luv's lreq.c and
 * lua-nginx-module's coctx->cleanup are the models).  The record lives from
 * fh_wait_start until the wait ends; it ends exactly once, in one of three
 * ways, and every way unlinks it from the generation's list and from the
 * binding's queue first, so nothing can reach it afterwards:
 *   - fh_wait_take: the binding has the answer (it resumes the task itself);
 *   - the deadline, a generation stop, fh_wait_cancel: the binding's cancel
 *     hook pushes the answer (or the default nil, reason, kind is pushed)
 *     and the task is resumed here;
 *   - fh_wait_forget: the Lua state is going away; the hook is told (with no
 *     coroutine) so the binding can forget its pointer, nothing is resumed.
 * A late wake therefore finds no record: a queue no longer lists it, a
 * binding whose hook ran has dropped its pointer. */

struct fh_wait {
  lua_State *co;
  fh_gen *gen;
  fh_waitq *q;
  fh_wait_cancel_fn cancel;
  void *data;
  int arg;
  int through_stop;
  int timed;                     /* timer was initialised: free after its close */
  uv_timer_t timer;
  fh_wait *gprev, *gnext;        /* the generation's list */
  fh_wait *qprev, *qnext;        /* the binding's queue */
};

static void fh_sched__wait_free_cb(uv_handle_t *h) { free(h->data); }

/* Unlinks w from its lists and stops its deadline; returns its task. */
static lua_State *fh_sched__wait_unlink(fh_wait *w) {
  lua_State *co = w->co;
  w->co = NULL;
  fh_wait **ghead = fh_gen_waits(w->gen);
  if (w->gprev) w->gprev->gnext = w->gnext; else *ghead = w->gnext;
  if (w->gnext) w->gnext->gprev = w->gprev;
  if (w->q) {
    if (w->qprev) w->qprev->qnext = w->qnext; else w->q->head = w->qnext;
    if (w->qnext) w->qnext->qprev = w->qprev; else w->q->tail = w->qprev;
    w->q = NULL;
  }
  if (w->timed) uv_timer_stop(&w->timer);
  return co;
}

static void fh_sched__wait_release(fh_wait *w) {
  if (w->timed) uv_close((uv_handle_t *)&w->timer, fh_sched__wait_free_cb);
  else free(w);
}

int fh_wait_push_reason(lua_State *co, int why) {
  static const char *const words[] = {"", "timeout", "stopping", "closed", "closed"};
  const char *word = why >= FH_WAIT_TIMEOUT && why <= FH_WAIT_GONE ? words[why] : "closed";
  lua_pushnil(co);
  lua_pushstring(co, word);
  lua_pushstring(co, word);
  return 3;
}

/* Ends w early for `why`: the hook answers (it may still read w's data
 * and arg), then w is released and the task resumes. */
static void fh_sched__wait_cut(fh_wait *w, int why) {
  lua_State *co = fh_sched__wait_unlink(w);
  if (why == FH_WAIT_GONE) co = NULL;
  int n;
  if (co) lua_checkstack(co, 8);
  if (w->cancel) n = w->cancel(w, co, why);
  else n = co ? fh_wait_push_reason(co, why) : 0;
  fh_sched__wait_release(w);
  if (co) fh_wait_resume(co, n);
}

static void fh_sched__on_deadline(uv_timer_t *t) { fh_sched__wait_cut(t->data, FH_WAIT_TIMEOUT); }

fh_wait *fh_wait_start(lua_State *L, lua_Number ms, int through_stop, fh_waitq *q,
                       fh_wait_cancel_fn cancel, void *data) {
  fh_gen *g = fh_gen_of(L);
  lua_State *co = fh_wait_begin(L);
  if (fh_gen_stopping(g) && !through_stop) return NULL;
  fh_wait *w = calloc(1, sizeof *w);
  if (!w) { luaL_error(L, "out of memory"); return NULL; }
  w->co = co;
  w->gen = g;
  w->cancel = cancel;
  w->data = data;
  w->through_stop = through_stop;
  fh_wait **ghead = fh_gen_waits(g);
  w->gnext = *ghead;
  if (*ghead) (*ghead)->gprev = w;
  *ghead = w;
  if (q) {
    w->q = q;
    w->qprev = q->tail;
    if (q->tail) q->tail->qnext = w; else q->head = w;
    q->tail = w;
  }
  if (ms >= 0) {
    w->timed = 1;
    w->timer.data = w;
    uv_timer_init(fh_loop(), &w->timer);
    /* the loop caches "now" per iteration; refresh it so a wait is never short */
    uv_update_time(fh_loop());
    uv_timer_start(&w->timer, fh_sched__on_deadline, ms > 0 ? (uint64_t)ms : 0, 0);
  }
  return w;
}

lua_State *fh_wait_task(const fh_wait *w) { return w->co; }

lua_State *fh_wait_take(fh_wait *w) {
  if (!w) return NULL;
  lua_State *co = fh_sched__wait_unlink(w);
  fh_sched__wait_release(w);
  return co;
}

void *fh_wait_data(const fh_wait *w) { return w->data; }
int fh_wait_arg(const fh_wait *w) { return w->arg; }
void fh_wait_set_arg(fh_wait *w, int arg) { w->arg = arg; }

void fh_wait_cancel(fh_wait *w, int why) { if (w) fh_sched__wait_cut(w, why); }

void fh_wait_forget(fh_wait *w) { if (w) fh_sched__wait_cut(w, FH_WAIT_GONE); }

fh_wait *fh_waitq_head(const fh_waitq *q) { return q->head; }

void fh_waitq_move(fh_waitq *from, fh_waitq *to) {
  for (fh_wait *w = from->head; w; w = w->qnext) w->q = to;
  *to = *from;
  from->head = from->tail = NULL;
}

void fh_waitq_cancel(fh_waitq *q, int why) {
  /* Take the whole queue first: a task resumed from here may wait on q
   * again, and must not be cut short by this same call. */
  fh_waitq now;
  fh_waitq_move(q, &now);
  while (now.head) fh_sched__wait_cut(now.head, why);
}

void fh_waits_stop(fh_gen *g) {
  /* Restart from the head after each cut: the hook may end other waits. */
  for (;;) {
    fh_wait *w = *fh_gen_waits(g);
    while (w && w->through_stop) w = w->gnext;
    if (!w) return;
    fh_sched__wait_cut(w, FH_WAIT_STOPPING);
  }
}

void fh_waits_forget(fh_gen *g) {
  fh_wait *w;
  while ((w = *fh_gen_waits(g))) fh_sched__wait_cut(w, FH_WAIT_GONE);
}

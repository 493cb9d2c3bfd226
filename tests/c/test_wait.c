/*
 * The timed wait under every binding: the C primitive itself (fh_wait in
 * core/sched.c), then timer.park / timer.unpark and the event built on it.
 * Covered: a deadline, a wake-up by another task, a cancel, a wake-up of a
 * task that already timed out or ended (a no-op that must not resume it in
 * the middle of something else), and the wake-up of every waiter when its
 * generation stops (but not of a wait through the stop).
 */
#include "run_script.h"
#include "gen.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char *slurp(const char *path) {
  static char buf[256];
  FILE *f = fopen(path, "r");
  if (!f) return NULL;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  return buf;
}


/* ---- the primitive, driven from C -------------------------------------------
 * A script hands its generation to fh_test_waits (through the FFI, which only
 * arms a timer: no Lua API is called from an FFI call); the checks then run
 * from libuv callbacks, outside Lua, as a binding's would. */

enum { T_DEADLINE, T_TAKEN, T_CANCEL, T_STOP, T_THROUGH, T_N };
static int hook_why[T_N];          /* why each wait's hook ran; 0: it did not */
static int hook_calls;
static fh_waitq queue;
static fh_gen *the_gen;
static uv_timer_t step_timer;
static int step, failed_checks, done;
static uint64_t t_start;

#define CHECK(cond, what) do { if (!(cond)) { fprintf(stderr, "primitive: %s\n", what); failed_checks++; } } while (0)

static int hook(fh_wait *w, lua_State *co, int why) {
  int slot = fh_wait_arg(w);
  hook_why[slot] = why;
  hook_calls++;
  return co ? fh_wait_push_reason(co, why) : 0;
}

/* A task body: waits on the primitive with the deadline, flags and slot
 * given as upvalues; returns what it was resumed with. */
static int task_body(lua_State *L) {
  lua_Number ms = lua_tonumber(L, lua_upvalueindex(1));
  int through = lua_toboolean(L, lua_upvalueindex(2));
  int slot = (int)lua_tointeger(L, lua_upvalueindex(3));
  fh_wait *w = fh_wait_start(L, ms, through, slot == T_DEADLINE ? NULL : &queue, hook, NULL);
  if (!w) return fh_wait_push_reason(L, FH_WAIT_STOPPING);
  fh_wait_set_arg(w, slot);
  return lua_yield(L, 0);
}

static void spawn_waiter(lua_Number ms, int through, int slot) {
  lua_State *L = fh_gen_L(the_gen);
  lua_pushnumber(L, ms);
  lua_pushboolean(L, through);
  lua_pushinteger(L, slot);
  lua_pushcclosure(L, task_body, 3);
  fh_task_spawn(the_gen, L, 0);
}

static void on_step(uv_timer_t *t) {
  switch (step++) {
  case 0: {
    t_start = uv_now(fh_loop());
    int before = fh_gen_inflight(the_gen);
    spawn_waiter(20, 0, T_DEADLINE);     /* ends by its deadline */
    spawn_waiter(-1, 0, T_TAKEN);        /* taken by the "binding" below */
    spawn_waiter(-1, 0, T_CANCEL);       /* cancelled below */
    CHECK(fh_gen_inflight(the_gen) == before + 3, "three waiting tasks are in flight");
    fh_wait *w = fh_waitq_head(&queue);
    CHECK(w && fh_wait_arg(w) == T_TAKEN, "the queue is FIFO");
    lua_State *co = fh_wait_take(w);
    CHECK(co != NULL, "take returns the task");
    lua_pushliteral(co, "answer");
    fh_wait_resume(co, 1);               /* outside Lua: the task ends now */
    CHECK(fh_gen_inflight(the_gen) == before + 2, "the taken task ended");
    CHECK(hook_why[T_TAKEN] == 0, "take does not run the hook");
    w = fh_waitq_head(&queue);
    CHECK(w && fh_wait_arg(w) == T_CANCEL, "the taken wait left the queue");
    fh_wait_cancel(w, FH_WAIT_CLOSED);
    CHECK(hook_why[T_CANCEL] == FH_WAIT_CLOSED, "cancel runs the hook with its reason");
    CHECK(fh_gen_inflight(the_gen) == before + 1, "the cancelled task ended");
    /* late wakes: nobody waits on the queue, so there is nothing to reach */
    int calls = hook_calls;
    CHECK(fh_waitq_head(&queue) == NULL, "an ended wait is on no queue");
    CHECK(fh_wait_take(fh_waitq_head(&queue)) == NULL, "a late take finds no task");
    fh_waitq_cancel(&queue, FH_WAIT_CLOSED);
    CHECK(hook_calls == calls, "a late cancel runs no hook");
    uv_timer_start(t, on_step, 40, 0);
    break;
  }
  case 1:
    CHECK(hook_why[T_DEADLINE] == FH_WAIT_TIMEOUT, "the deadline ran the hook");
    CHECK(uv_now(fh_loop()) - t_start >= 20, "not before the deadline");
    /* left waiting for the generation's stop (the script ends next) */
    spawn_waiter(-1, 0, T_STOP);
    spawn_waiter(50, 1, T_THROUGH);
    uv_close((uv_handle_t *)t, NULL);
    done = 1;
    break;
  }
}

int fh_test_waits(void *gen);
int fh_test_waits(void *gen) {
  the_gen = gen;
  uv_timer_init(fh_loop(), &step_timer);
  uv_timer_start(&step_timer, on_step, 0, 0);
  return 0;
}
int fh_test_waits_done(void);
int fh_test_waits_done(void) { return done; }

static int primitive_checks(void) {
  const char *src =
      "local ffi, timer = require 'ffi', require 'flashhost.timer'\n"
      "ffi.cdef 'int fh_test_waits(void *gen); int fh_test_waits_done(void);'\n"
      "ffi.C.fh_test_waits(debug.getregistry()['fh.gen'])\n"
      "for _ = 1, 200 do if ffi.C.fh_test_waits_done() ~= 0 then break end timer.sleep(5) end\n"
      "assert(ffi.C.fh_test_waits_done() ~= 0, 'the C steps ran')\n";
  int rc = run(src, "primitive");
  CHECK(rc == 0, "the script ran");
  CHECK(hook_why[T_STOP] == FH_WAIT_STOPPING, "the generation's stop ran the hook of a plain wait");
  CHECK(hook_why[T_THROUGH] == FH_WAIT_TIMEOUT, "a wait through the stop ran to its deadline");
  return failed_checks;
}

int main(void) {
  setenv("LOG_LEVEL", "error", 1);
  fh_log_init();
  int failures = 0;

  if (primitive_checks() != 0) failures++;

  const char *park =
      "local core, timer = require 'flashhost.core', require 'flashhost.timer'\n"
      /* deadline */
      "local t0 = core.mono()\n"
      "local v, err = timer.park(30)\n"
      "assert(v == nil and err == 'timeout', 'deadline: ' .. tostring(err))\n"
      "assert(core.mono() - t0 >= 29, 'waited the deadline')\n"
      /* woken by another task, with its values, before the deadline */
      "local me = coroutine.running()\n"
      "core.spawn(function() timer.sleep(5) assert(timer.unpark(me, 'a', nil, 3)) end)\n"
      "t0 = core.mono()\n"
      "local a, b, c = timer.park(5000)\n"
      "assert(a == 'a' and b == nil and c == 3, 'values of unpark')\n"
      "assert(core.mono() - t0 < 1000, 'woken early')\n"
      /* a wake-up after the wait timed out does nothing, and cannot resume
       * the task inside its next wait (a sleep here) */
      "local late\n"
      "core.spawn(function()\n"
      "  late = coroutine.running()\n"
      "  timer.park(1)\n"
      "  local ok = timer.sleep(40)\n"
      "  late = ok and 'slept' or 'broken'\n"
      "end)\n"
      "timer.sleep(10)\n"
      "assert(type(late) == 'thread', 'the task is sleeping now')\n"
      "assert(timer.unpark(late, 'too late') == false, 'wake after timeout is a no-op')\n"
      "timer.sleep(60)\n"
      "assert(late == 'slept', 'the sleep ran its course: ' .. tostring(late))\n"
      /* a wake-up of a task that ended is a no-op too */
      "local ended\n"
      "core.spawn(function() ended = coroutine.running() end)\n"
      "assert(type(ended) == 'thread')\n"
      "assert(timer.unpark(ended, 1) == false, 'wake after end is a no-op')\n"
      /* misuse raises */
      "assert(not pcall(timer.unpark, 'x'), 'unpark needs a coroutine')\n"
      "assert(not pcall(timer.park, -1), 'negative deadline raises')\n"
      "os.exit(0)\n";
  if (run(park, "park and unpark") != 0) failures++;

  const char *event =
      "local core, timer = require 'flashhost.core', require 'flashhost.timer'\n"
      "local ev = core.event()\n"
      "local got = {}\n"
      "for i = 1, 3 do core.spawn(function() got[i] = { ev:wait(2000) } end) end\n"
      "local impatient\n"
      "core.spawn(function() impatient = { ev:wait(5) } end)\n"
      "timer.sleep(20)\n"
      "assert(impatient[1] == nil and impatient[2] == 'timeout', 'a waiter times out')\n"
      "assert(ev:set('go', 7) == 3, 'three waiters woken, not the one that gave up')\n"
      "assert(#got == 0, 'set does not run the waiters inside the caller')\n"
      "timer.sleep(1)\n"
      "for i = 1, 3 do assert(got[i][1] == 'go' and got[i][2] == 7, 'waiter ' .. i) end\n"
      "local a, b = ev:wait(1)\n"
      "assert(a == 'go' and b == 7, 'a set event answers at once')\n"
      "ev:clear()\n"
      "local x, e = ev:wait(1)\n"
      "assert(x == nil and e == 'timeout', 'a cleared event waits again')\n"
      "os.exit(0)\n";
  if (run(event, "event") != 0) failures++;

  /* When the script ends its generation stops: a task parked with no
   * deadline must be woken with nil, "stopping" (and may still write). */
  char out[] = "/tmp/fh-test-wait-out-XXXXXX";
  int ofd = mkstemp(out);
  close(ofd);
  char stop[2048];
  snprintf(stop, sizeof stop,
           "local core = require 'flashhost.core'\n"
           "core.spawn(function()\n"
           "  local v, err = core.event():wait()\n"
           "  local f = io.open('%s', 'a') f:write(tostring(v), ' ', tostring(err), ';') f:close()\n"
           "end)\n"
           /* ... but not one that waits through a stop: it keeps its deadline */
           "core.spawn(function()\n"
           "  local v, err = core.event():wait(50, true)\n"
           "  local f = io.open('%s', 'a') f:write(tostring(v), ' ', tostring(err), ';') f:close()\n"
           "end)\n",
           out, out);
  if (run(stop, "stop wakes waiters") != 0) failures++;
  char *woke = slurp(out);
  if (!woke || strcmp(woke, "nil stopping;nil timeout;") != 0) {
    fprintf(stderr, "a parked task was not woken by its generation's stop: '%s'\n", woke ? woke : "(none)");
    failures++;
  }
  unlink(out);

  if (failures) { fprintf(stderr, "%d wait check(s) failed\n", failures); return 1; }
  printf("wait: all passed\n");
  return 0;
}

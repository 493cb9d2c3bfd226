/*
 * The timed wait under every binding (timer.park / timer.unpark) and the
 * event built on it: a deadline, a wake-up by another task, a wake-up of a
 * task that already timed out or ended (a no-op that must not resume it in
 * the middle of something else), and the wake-up of every waiter when its
 * generation stops.
 */
#include "worker.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int run(const char *src, const char *name) {
  char path[] = "/tmp/fh-test-wait-XXXXXX.lua";
  int fd = mkstemps(path, 4);
  (void)!write(fd, src, strlen(src));
  close(fd);
  int rc = fh_worker_script(path, 0, NULL);
  unlink(path);
  printf("%s: exit %d\n", name, rc);
  return rc;
}

static char *slurp(const char *path) {
  static char buf[256];
  FILE *f = fopen(path, "r");
  if (!f) return NULL;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  return buf;
}

int main(void) {
  setenv("LOG_LEVEL", "error", 1);
  fh_log_init();
  int failures = 0;

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

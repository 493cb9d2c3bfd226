/*
 * The scheduler through its Lua face: tasks spawned from tasks, sleeps that
 * resume in deadline order, I/O calls refused outside a task, errors inside
 * a task contained, and the exit code of `flashhost --run`.
 */
#include "run_script.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(void) {
  setenv("LOG_LEVEL", "error", 1);
  fh_log_init();
  int failures = 0;

  const char *ordering =
      "local core, timer = require 'flashhost.core', require 'flashhost.timer'\n"
      "local seen = {}\n"
      "for i, ms in ipairs { 60, 20, 40 } do\n"
      "  core.spawn(function() timer.sleep(ms) seen[#seen + 1] = ms end)\n"
      "end\n"
      "local t0 = core.mono()\n"
      "timer.sleep(100)\n"
      "assert(#seen == 3, 'all three sleepers woke: ' .. #seen)\n"
      "assert(seen[1] == 20 and seen[2] == 40 and seen[3] == 60, 'deadline order')\n"
      "assert(core.mono() - t0 >= 99, 'slept at least 100 ms')\n"
      /* a coroutine that is not a task cannot do I/O: it must raise, not hang */
      "local co = coroutine.create(function() return timer.sleep(1) end)\n"
      "local ok = coroutine.resume(co)\n"
      "assert(ok, 'nested coroutine yields through to the caller')\n"
      "local ok2, err = pcall(timer.sleep, 'x')\n"
      "assert(not ok2 and tostring(err):find('number expected'), 'misuse raises: ' .. tostring(err))\n"
      /* an error in a spawned task is logged and does not end this one */
      "core.spawn(function() error('contained') end)\n"
      "timer.sleep(5)\n"
      "local ids = {}\n"
      "for i = 1, 10000 do local id = core.id() assert(not ids[id], 'unique ids') ids[id] = true end\n"
      /* blocks: aligned, and no id of one is handed out again, by a block or by core.id */
      "local ffi = require 'ffi'\n"
      "ffi.cdef 'unsigned long long strtoull(const char *, char **, int);'\n"
      "local function u64(s) return ffi.C.strtoull(s, nil, 10) end\n"
      "local prev = u64(core.id())\n"
      "for i = 1, 40 do\n"
      "  local b, size = core.id_block()\n"
      "  assert(size == 256, 'block size ' .. tostring(size))\n"
      "  local v = u64(b)\n"
      "  assert(v % 256 == 0, 'block aligned: ' .. b)\n"
      "  assert(v > prev, 'block after the ids before it: ' .. b)\n"
      "  local after = u64(core.id())\n"
      "  assert(after > v + 255, 'no id of the block handed out again: ' .. b)\n"
      "  prev = after\n"
      "end\n"
      "os.exit(0)\n";
  if (run(ordering, "ordering") != 0) failures++;

  if (run("error('boom')\n", "error exits 1") != 1) failures++;
  if (run("os.exit(7)\n", "os.exit code") != 7) failures++;
  if (run("local t = require 'flashhost.timer'\nt.sleep(1)\n", "plain end exits 0") != 0) failures++;

  if (failures) { fprintf(stderr, "%d scheduler check(s) failed\n", failures); return 1; }
  printf("scheduler: all passed\n");
  return 0;
}

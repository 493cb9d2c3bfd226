/* Runs Lua source as `flashhost --run` would (one task, every binding there)
 * and returns its exit code: shared by the C tests of the runtime. */
#ifndef FH_TEST_RUN_SCRIPT_H
#define FH_TEST_RUN_SCRIPT_H
#include "worker.h"
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <stdlib.h>

static int run(const char *src, const char *name) {
  char path[] = "/tmp/fh-test-script-XXXXXX.lua";
  int fd = mkstemps(path, 4);
  (void)!write(fd, src, strlen(src));
  close(fd);
  int rc = fh_worker_script(path, 0, NULL);
  unlink(path);
  printf("%s: exit %d\n", name, rc);
  return rc;
}
#endif

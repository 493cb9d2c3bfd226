/* flashhost APP.lua — runs a Lua app on the flashhost runtime. */
#include "worker.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <limits.h>

static void fh_main__usage(FILE *f) {
  fprintf(f,
          "usage: flashhost [--workers N] [--watch] APP.lua\n"
          "       flashhost --check APP.lua\n"
          "       flashhost --run SCRIPT.lua [ARGS...]   run a script as one task (tools, tests)\n\n"
          "  --workers N  worker processes sharing the port (default: WORKERS or the number of cores;\n"
          "               0 runs the app in this process, without a master)\n"
          "  --watch      reload when a .lua file of the app changes (SIGHUP always reloads)\n"
          "  --check      load and validate the app, serve nothing, exit 0 if it is good\n\n"
          "environment: PORT (3000), ADMIN_PORT (9145, 0 = off), HOST, NODE_ID, LOG_LEVEL,\n"
          "  HTTP_MAX_BODY, HTTP_MAX_HEADER, HTTP_READ_TIMEOUT_MS, HTTP_IDLE_TIMEOUT_MS\n");
}

int main(int argc, char **argv) {
  int workers = -1, watch = 0, check = 0, worker_id = -1;
  const char *app = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--workers") && i + 1 < argc) workers = atoi(argv[++i]);
    else if (!strcmp(a, "--worker-id") && i + 1 < argc) worker_id = atoi(argv[++i]);
    else if (!strcmp(a, "--watch")) watch = 1;
    else if (!strcmp(a, "--check")) check = 1;
    else if (!strcmp(a, "--run") && i + 1 < argc) {
      fh_log_init();
      return fh_worker_script(argv[i + 1], argc - i - 2, argv + i + 2);
    }
    else if (!strcmp(a, "--version")) { printf("flashhost %s\n", FH_VERSION); return 0; }
    else if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fh_main__usage(stdout); return 0; }
    else if (a[0] == '-' || app) { fh_main__usage(stderr); return 64; }
    else app = a;
  }
  if (!app) { fh_main__usage(stderr); return 64; }
  if (access(app, R_OK) != 0) { fprintf(stderr, "flashhost: cannot read %s\n", app); return 66; }
  fh_log_init();
  if (check) return fh_worker_check(app);
  if (worker_id >= 0) return fh_worker_run(app, worker_id, 1);
  if (workers < 0) workers = getenv("WORKERS") ? atoi(getenv("WORKERS")) : (int)sysconf(_SC_NPROCESSORS_ONLN);
  if (workers == 0) {
    if (fh_ports_claim() != 0) return 1;
    int rc = fh_worker_run(app, 0, 0);
    fh_ports_release();
    return rc;
  }
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) { perror("readlink /proc/self/exe"); return 71; }
  self[n] = 0;
  return fh_master_run(self, app, workers, watch);
}

/*
 * A worker process: one loop, the current generation, the listeners.
 *
 * SIGHUP builds a new generation and switches to it only when it booted;
 * SIGTERM/SIGINT stop accepting, finish the requests in flight, run the app's
 * stop hook and exit — or give up after FH_DRAIN_TIMEOUT_MS.
 */
#include "worker.h"
#include "gen.h"
#include "http.h"
#include "host.h"
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <unistd.h>

static struct {
  uv_loop_t loop;
  const char *app;
  int exit_code;
  int stopping;
  fh_gen *booting;          /* a reload in progress */
  uv_signal_t sig_hup, sig_term, sig_int;
  uv_timer_t deadline;
} W;

static int fh_worker__env_int(const char *name, int dflt) {
  const char *v = getenv(name);
  return v && *v ? atoi(v) : dflt;
}

/* core.run_done(code) of a --run script, through the hook of core/host.c */
static void fh_worker__set_exit(int code) { W.exit_code = code; }

static void fh_worker__close_walk(uv_handle_t *h, void *arg) {
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

static void fh_worker__finish(void) {
  /* Whatever handles the bindings still hold were closed by lua_close's
   * finalizers; close our own and let the loop run out. */
  fh_sched_close();
  uv_walk(&W.loop, fh_worker__close_walk, NULL);
}

static void fh_worker__gen_retired(fh_gen *g) {
  fh_log(FH_LOG_DEBUG, "generation %d retired", fh_gen_id(g));
  fh_gen_free(g);
}

static void fh_worker__last_gen_retired(fh_gen *g) {
  fh_gen_free(g);
  if (W.booting) return; /* its own retirement finishes the shutdown */
  fh_worker__finish();
}

static void fh_worker__http_drained(void) {
  fh_gen *g = fh_gen_current();
  if (W.booting) fh_gen_stop(W.booting, fh_worker__last_gen_retired);
  if (g) fh_gen_stop(g, fh_worker__last_gen_retired);
  else if (!W.booting) fh_worker__finish();
}

static void fh_worker__on_deadline(uv_timer_t *t) {
  fh_log(FH_LOG_WARN, "drain took longer than allowed; exiting with work in flight");
  exit(W.exit_code ? W.exit_code : 1);
}

static void fh_worker__shutdown(int code) {
  if (W.stopping) return;
  W.stopping = 1;
  W.exit_code = code;
  uv_signal_stop(&W.sig_hup);
  uint64_t limit = (uint64_t)fh_worker__env_int("FH_DRAIN_TIMEOUT_MS", 10000);
  uv_timer_start(&W.deadline, fh_worker__on_deadline, limit, 0);
  uv_unref((uv_handle_t *)&W.deadline);
  fh_http_drain(fh_worker__http_drained);
}

static void fh_worker__on_reload_boot(fh_gen *g, int ok, const char *err) {
  W.booting = NULL;
  if (!ok) {
    fh_log(FH_LOG_ERROR, "reload refused, the running code keeps serving: %s", err ? err : "?");
    fh_gen_stop(g, W.stopping ? fh_worker__last_gen_retired : fh_worker__gen_retired);
    return;
  }
  if (W.stopping) { fh_gen_stop(g, fh_worker__last_gen_retired); return; }
  fh_gen *old = fh_gen_current();
  fh_gen_set_current(g);
  fh_log(FH_LOG_INFO, "reloaded: generation %d serves, generation %d retires (%d in flight)",
         fh_gen_id(g), old ? fh_gen_id(old) : 0, old ? fh_gen_inflight(old) : 0);
  if (old) fh_gen_stop(old, fh_worker__gen_retired);
}

static void fh_worker__reload(void) {
  if (W.stopping) return;
  if (W.booting) { fh_log(FH_LOG_WARN, "reload already in progress; ignored"); return; }
  fh_log(FH_LOG_INFO, "reloading %s", W.app);
  fh_gen *g = fh_gen_new(W.app, fh_worker__on_reload_boot);
  if (!g) fh_log(FH_LOG_ERROR, "reload refused: cannot build a Lua state");
  else if (fh_gen_booting(g)) W.booting = g; /* the start hook is waiting on I/O */
}

/* The server's request handler: the request becomes a task of the current
 * generation, which calls the runtime facade's dispatch(request, responder). */
static int fh_worker__dispatch(fh_conn *c) {
  fh_gen *g = fh_gen_current();
  if (!g) return 503;
  lua_State *L = fh_gen_L(g);
  fh_gen_push_runtime(g, "dispatch");
  if (fh_http_push_request(L, c) != 0) {
    lua_pop(L, 1);
    return 400;
  }
  fh_http_push_responder(L, c);
  /* On a refusal the responder userdata was dropped unsent; its __gc releases c. */
  return fh_task_spawn(g, L, 2) != 0 ? 503 : 0;
}

static void fh_worker__on_signal(uv_signal_t *s, int signum) {
  if (signum == SIGHUP) fh_worker__reload();
  else fh_worker__shutdown(0);
}

static int fh_worker__listen_all(void) {
  fh_ports p;
  fh_ports_get(&p);
  const char *host = p.host, *admin_host = p.admin_host;
  int port = p.port, admin = p.admin_port;
  int rc = fh_http_listen(host, port, "public");
  if (rc) { fh_log(FH_LOG_ERROR, "cannot listen on %s:%d: %s", host, port, uv_strerror(rc)); return rc; }
  if (admin > 0 && (rc = fh_http_listen(admin_host, admin, "admin")) != 0) {
    fh_log(FH_LOG_ERROR, "cannot listen on %s:%d: %s", admin_host, admin, uv_strerror(rc));
    return rc;
  }
  fh_log(FH_LOG_INFO, "serving %s on %s:%d (admin %s:%d)", W.app, host, port, admin_host, admin);
  return 0;
}

static void fh_worker__on_first_boot(fh_gen *g, int ok, const char *err) {
  W.booting = NULL;
  if (!ok) {
    fh_log(FH_LOG_ERROR, "app failed to start: %s", err ? err : "?");
    W.exit_code = FH_EXIT_BOOT_FAILED;
    W.stopping = 1;
    fh_gen_stop(g, fh_worker__last_gen_retired);
    return;
  }
  fh_gen_set_current(g);
  if (fh_worker__listen_all() != 0) {
    W.exit_code = FH_EXIT_BOOT_FAILED;
    fh_worker__shutdown(FH_EXIT_BOOT_FAILED);
  }
}

/* What every mode (serve, --check, --run) sets up first: the process's
 * identity and loop, the scheduler, the HTTP limits, and the hooks through
 * which the layers below hand work up to the worker. */
static void fh_worker__start(const char *app, int id, int node, int master_pid) {
  fh_proc_set(&W.loop, id, node, master_pid);
  W.app = app;
  uv_loop_init(&W.loop);
  fh_sched_init(&W.loop);
  fh_http_init();
  fh_http_set_handler(fh_worker__dispatch);
  fh_core_set_exit_hook(fh_worker__set_exit);
}

/* Runs the loop until nothing is left, then closes it (0, or UV_EBUSY). */
static int fh_worker__run_loop(void) {
  uv_run(&W.loop, UV_RUN_DEFAULT);
  uv_run(&W.loop, UV_RUN_DEFAULT); /* close callbacks queued by the last pass */
  return uv_loop_close(&W.loop);
}

int fh_worker_run(const char *app, int id, int has_master) {
  signal(SIGPIPE, SIG_IGN);
  fh_worker__start(app, id, fh_worker__env_int("NODE_ID", 0) & 0x1f, has_master ? (int)getppid() : 0);
  uv_timer_init(&W.loop, &W.deadline);
  uv_signal_init(&W.loop, &W.sig_hup);
  uv_signal_init(&W.loop, &W.sig_term);
  uv_signal_init(&W.loop, &W.sig_int);
  uv_signal_start(&W.sig_hup, fh_worker__on_signal, SIGHUP);
  uv_signal_start(&W.sig_term, fh_worker__on_signal, SIGTERM);
  uv_signal_start(&W.sig_int, fh_worker__on_signal, SIGINT);
  /* The master starts us with SIGHUP blocked (core/master.c); one sent
   * meanwhile is pending and now becomes a reload. */
  sigset_t hup;
  sigemptyset(&hup);
  sigaddset(&hup, SIGHUP);
  sigprocmask(SIG_UNBLOCK, &hup, NULL);

  fh_gen *g = fh_gen_new(app, fh_worker__on_first_boot);
  if (!g) return FH_EXIT_BOOT_FAILED;
  if (fh_gen_booting(g)) W.booting = g;
  if (fh_worker__run_loop() != 0) fh_log(FH_LOG_DEBUG, "loop closed with handles still open");
  fh_log(FH_LOG_INFO, "worker exits (%d)", W.exit_code);
  return W.exit_code;
}

void fh_worker_reload(void) { fh_worker__reload(); }

/* --check: boot the app in check mode (load and validate, start nothing). */
static int fh_worker__check_result = FH_EXIT_BOOT_FAILED;
static void fh_worker__check_retired(fh_gen *g) { fh_gen_free(g); fh_worker__finish(); }
static void fh_worker__on_check_boot(fh_gen *g, int ok, const char *err) {
  if (ok) { fh_worker__check_result = 0; fprintf(stdout, "%s: ok\n", W.app); }
  else fprintf(stderr, "%s: %s\n", W.app, err ? err : "failed");
  fh_gen_stop(g, fh_worker__check_retired);
}

int fh_worker_check(const char *app) {
  setenv("FH_MODE", "check", 1);
  fh_worker__start(app, -1, 0, 0);
  fh_gen *g = fh_gen_new(app, fh_worker__on_check_boot);
  if (!g) return FH_EXIT_BOOT_FAILED;
  fh_worker__run_loop();
  return fh_worker__check_result;
}

static void fh_worker__on_script_end(fh_gen *g, int ok, const char *err) {
  fh_gen_stop(g, fh_worker__check_retired);
}

int fh_worker_script(const char *script, int argc, char **argv) {
  /* Arguments travel through the environment, separated by \x1f, so the
   * Lua side can build `arg` without a C-to-Lua handshake. */
  size_t cap = 1;
  for (int i = 0; i < argc; i++) cap += strlen(argv[i]) + 1;
  char *joined = calloc(1, cap);
  for (int i = 0; i < argc; i++) {
    if (i) strcat(joined, "\x1f");
    strcat(joined, argv[i]);
  }
  setenv("FH_RUN_ARGS", joined, 1);
  free(joined);
  setenv("FH_MODE", "run", 1);
  signal(SIGPIPE, SIG_IGN);
  fh_worker__start(script, 0, fh_worker__env_int("NODE_ID", 0) & 0x1f, 0);
  fh_gen *g = fh_gen_new(script, fh_worker__on_script_end);
  if (!g) return 1;
  fh_worker__run_loop();
  return W.exit_code;
}

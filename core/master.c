/*
 * The master process: starts N workers (each a fresh exec of this binary, so
 * no libuv or Lua state crosses a fork), restarts a worker that crashed,
 * forwards SIGHUP (reload) and SIGTERM/SIGINT (drain), and exits when every
 * worker has exited.  A worker whose app failed to boot is not restarted.
 */
#include "worker.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <unistd.h>
#include <errno.h>
#include <sys/wait.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/file.h>
#include <fcntl.h>
#include <dirent.h>

#define FH_MAX_WORKERS 64

typedef struct {
  pid_t pid;
  uint64_t started;  /* ms, monotonic */
  int crashes;       /* quick crashes in a row, for backoff */
  uv_timer_t restart;
} fh_master__child;

static struct {
  uv_loop_t *loop;
  const char *self, *app;
  int n, stopping, alive, boot_failures;
  uint64_t stop_requested; /* loop time of the first stop signal */
  fh_master__child kids[FH_MAX_WORKERS];
  uv_signal_t sig_chld, sig_hup, sig_term, sig_int;
} M;

static void fh_master__write_metrics(void);

static void fh_master__spawn(int i) {
  char idbuf[16];
  snprintf(idbuf, sizeof idbuf, "%d", i);
  pid_t master = getpid();
  pid_t pid = fork();
  if (pid < 0) { fh_log(FH_LOG_ERROR, "fork: %s", strerror(errno)); return; }
  if (pid == 0) {
    /* Default dispositions and a mask with only SIGHUP: the exec'd worker
     * installs its own handlers, then unblocks SIGHUP.  A reload forwarded
     * before that would otherwise meet the default action and kill it. */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGHUP);
    sigprocmask(SIG_SETMASK, &mask, NULL);
    /* A worker must not outlive its master (killed with SIGKILL, say): it
     * would keep its port share and its Kafka partitions with nobody to
     * supervise it.  The signal survives exec; the getppid check closes the
     * race with a master that died before prctl ran. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != master) _exit(0);
    execl(M.self, M.self, "--worker-id", idbuf, M.app, (char *)NULL);
    fprintf(stderr, "exec %s: %s\n", M.self, strerror(errno));
    _exit(127);
  }
  M.kids[i].pid = pid;
  M.kids[i].started = uv_now(M.loop);
  M.alive++;
  fh_master__write_metrics();
  fh_log(FH_LOG_INFO, "worker %d started (pid %d)", i, (int)pid);
}

/* The master's own samples, merged into /metrics by the workers
 * (core/lua/flashhost/metrics.lua reads <dir>/master.prom). */
static char fh_master__metrics_dir[256];
static unsigned long fh_master__restarts;

static void fh_master__write_metrics(void) {
  char path[300], tmp[310];
  snprintf(path, sizeof path, "%s/master.prom", fh_master__metrics_dir);
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "w");
  if (!f) return;
  fprintf(f, "# HELP flashhost_worker_restarts_total Workers restarted after they died.\n"
             "# TYPE flashhost_worker_restarts_total counter\n"
             "flashhost_worker_restarts_total %lu\n"
             "# HELP flashhost_workers Worker processes alive.\n"
             "# TYPE flashhost_workers gauge\n"
             "flashhost_workers %d\n", fh_master__restarts, M.alive);
  fclose(f);
  rename(tmp, path);
}

static void fh_master__remove_dir(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *e;
  char path[600];
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    unlink(path);
  }
  closedir(d);
  rmdir(dir);
}

/* A master holds an flock on <metrics dir>/master.lock for its life, so a
 * later master can tell a live master's folder from a dead one's without
 * trusting pids (they are reused).  The file is locked before it is renamed
 * into place: whoever sees master.lock sees it locked while its master lives. */
static void fh_master__lock_metrics_dir(void) {
  char tmp[400], path[400];
  snprintf(tmp, sizeof tmp, "%s/master.lock.tmp", fh_master__metrics_dir);
  snprintf(path, sizeof path, "%s/master.lock", fh_master__metrics_dir);
  int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return;
  if (flock(fd, LOCK_EX | LOCK_NB) != 0 || rename(tmp, path) != 0) { close(fd); unlink(tmp); return; }
  /* kept open, never closed: the kernel releases the lock when we die */
}

/* Whether the folder of master `pid` outlived it. */
static int fh_master__orphan_dir(const char *dir, int pid) {
  char path[400];
  snprintf(path, sizeof path, "%s/master.lock", dir);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    int unlocked = flock(fd, LOCK_SH | LOCK_NB) == 0;
    close(fd);
    return unlocked;
  }
  /* No lock yet (just created) or left by an older flashhost: the pid
   * decides.  Gone is proof; alive, it must not be a flashhost (by name or
   * by being this very binary) — a pid now owned by another program. */
  if (kill(pid, 0) != 0 && errno == ESRCH) return 1;
  char proc[64], comm[64] = "", exe[512], self[512];
  snprintf(proc, sizeof proc, "/proc/%d/comm", pid);
  FILE *f = fopen(proc, "r");
  if (!f) return 0;
  int got = fgets(comm, sizeof comm, f) != NULL;
  fclose(f);
  if (!got || strstr(comm, "flashhost")) return 0;
  snprintf(proc, sizeof proc, "/proc/%d/exe", pid);
  ssize_t n = readlink(proc, exe, sizeof exe - 1), m = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0 || m <= 0) return 0; /* cannot tell: keep it */
  exe[n] = self[m] = 0;
  return strcmp(exe, self) != 0;
}

/* Removes the /dev/shm/flashhost-<pid> folders of masters that died without
 * cleaning up (SIGKILL, a crash); a live master's folder is left alone. */
static void fh_master__remove_stale_metrics_dirs(void) {
  DIR *d = opendir("/dev/shm");
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d))) {
    int pid, end = 0;
    if (sscanf(e->d_name, "flashhost-%d%n", &pid, &end) != 1 || e->d_name[end] || pid <= 0) continue;
    if (pid == (int)getpid()) continue;
    char dir[300];
    snprintf(dir, sizeof dir, "/dev/shm/%s", e->d_name);
    if (!fh_master__orphan_dir(dir, pid)) continue;
    fh_master__remove_dir(dir);
    fh_log(FH_LOG_INFO, "removed %s, left by a master that is gone", dir);
  }
  closedir(d);
}

static void fh_master__on_restart(uv_timer_t *t) {
  int i = (int)(intptr_t)t->data;
  if (!M.stopping) fh_master__spawn(i);
}

static void fh_master__reap(void) {
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    int i;
    for (i = 0; i < M.n && M.kids[i].pid != pid; i++) {}
    if (i == M.n) continue;
    fh_master__child *k = &M.kids[i];
    k->pid = 0;
    M.alive--;
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    if (M.stopping) {
      fh_log(FH_LOG_INFO, "worker %d exited (%d)", i, code);
    } else if (code == FH_EXIT_BOOT_FAILED) {
      fh_log(FH_LOG_ERROR, "worker %d could not start its app; not restarting it", i);
      M.boot_failures++;
    } else {
      /* Back off when a worker dies right after starting, so a crash loop
       * does not eat the machine; a worker that ran a while restarts at once. */
      uint64_t lived = uv_now(M.loop) - k->started;
      k->crashes = lived < 1000 ? k->crashes + 1 : 0;
      uint64_t delay = k->crashes ? (100u << (k->crashes > 8 ? 8 : k->crashes)) : 0;
      if (delay > 30000) delay = 30000;
      fh_log(FH_LOG_WARN, "worker %d (pid %d) died (%s %d); restarting in %llu ms", i, (int)pid,
             WIFSIGNALED(status) ? "signal" : "exit", WIFSIGNALED(status) ? WTERMSIG(status) : code,
             (unsigned long long)delay);
      fh_master__restarts++;
      uv_timer_start(&k->restart, fh_master__on_restart, delay, 0);
    }
  }
  if (M.alive == 0 && (M.stopping || M.boot_failures == M.n)) uv_stop(M.loop);
}

static void fh_master__signal_all(int sig) {
  for (int i = 0; i < M.n; i++) if (M.kids[i].pid > 0) kill(M.kids[i].pid, sig);
}

static void fh_master__on_signal(uv_signal_t *s, int signum) {
  switch (signum) {
    case SIGCHLD: fh_master__reap(); break;
    case SIGHUP: fh_log(FH_LOG_INFO, "reload requested"); fh_master__signal_all(SIGHUP); break;
    default:
      /* A second request a while after the first means "no more waiting".
       * Right after the first it is the same request arriving twice (Ctrl-C
       * reaches the whole process group, and a supervisor may add SIGTERM). */
      if (M.stopping) {
        if (uv_now(M.loop) - M.stop_requested > 2000) fh_master__signal_all(SIGKILL);
        break;
      }
      M.stopping = 1;
      M.stop_requested = uv_now(M.loop);
      for (int i = 0; i < M.n; i++) uv_timer_stop(&M.kids[i].restart);
      fh_log(FH_LOG_INFO, "stopping %d workers", M.alive);
      fh_master__signal_all(SIGTERM);
      if (M.alive == 0) uv_stop(M.loop);
  }
}

static void fh_master__on_watch(void) {
  fh_log(FH_LOG_INFO, "app files changed; reloading");
  fh_master__signal_all(SIGHUP);
}

int fh_master_run(const char *self, const char *app, int nworkers, int watch) {
  M.loop = uv_default_loop();
  fh_proc_set(M.loop, -1, 0, 0); /* no worker id: log lines say "worker":-1 */
  M.self = self;
  M.app = app;
  M.n = nworkers > FH_MAX_WORKERS ? FH_MAX_WORKERS : nworkers;
  if (fh_ports_claim() != 0) return 1; /* before anything is created that would need cleaning */
  const char *md = getenv("FH_METRICS_DIR");
  if (md && *md) snprintf(fh_master__metrics_dir, sizeof fh_master__metrics_dir, "%s", md);
  else snprintf(fh_master__metrics_dir, sizeof fh_master__metrics_dir, "/dev/shm/flashhost-%d", (int)getpid());
  fh_master__remove_stale_metrics_dirs();
  /* A folder named after our own pid was left by a dead master whose pid we
   * got; its snapshots must not be taken for our workers' predecessors. */
  if (!md || !*md) fh_master__remove_dir(fh_master__metrics_dir);
  mkdir(fh_master__metrics_dir, 0700);
  fh_master__lock_metrics_dir();
  uv_signal_init(M.loop, &M.sig_chld);
  uv_signal_init(M.loop, &M.sig_hup);
  uv_signal_init(M.loop, &M.sig_term);
  uv_signal_init(M.loop, &M.sig_int);
  uv_signal_start(&M.sig_chld, fh_master__on_signal, SIGCHLD);
  uv_signal_start(&M.sig_hup, fh_master__on_signal, SIGHUP);
  uv_signal_start(&M.sig_term, fh_master__on_signal, SIGTERM);
  uv_signal_start(&M.sig_int, fh_master__on_signal, SIGINT);
  for (int i = 0; i < M.n; i++) {
    uv_timer_init(M.loop, &M.kids[i].restart);
    M.kids[i].restart.data = (void *)(intptr_t)i;
  }
  if (watch && fh_watch_start(M.loop, app, fh_master__on_watch) != 0)
    fh_log(FH_LOG_WARN, "cannot watch the app folder; reload with SIGHUP");
  fh_log(FH_LOG_INFO, "master %d starting %d workers for %s", (int)getpid(), M.n, app);
  for (int i = 0; i < M.n; i++) fh_master__spawn(i);
  uv_run(M.loop, UV_RUN_DEFAULT);
  int failed = M.boot_failures > 0;
  if (!md || !*md) fh_master__remove_dir(fh_master__metrics_dir);
  fh_ports_release();
  fh_log(FH_LOG_INFO, "master exits");
  return failed ? 1 : 0;
}

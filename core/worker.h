/* Worker and master processes (internal to the runtime). */
#ifndef FH_WORKER_H
#define FH_WORKER_H
#include "fh.h"

/* A worker exits with this code when its app cannot start: the master does
 * not restart it (it would fail again), unlike a crash. */
#define FH_EXIT_BOOT_FAILED 2

int fh_worker_run(const char *app, int id, int has_master);
int fh_worker_check(const char *app);
/* --run SCRIPT: one task, no listeners; returns the script's exit code. */
int fh_worker_script(const char *script, int argc, char **argv);
void fh_worker_reload(void);
int fh_master_run(const char *self, const char *app, int nworkers, int watch);

/* core/ports.c: the listeners' addresses from HOST, PORT (3000), ADMIN_HOST,
 * ADMIN_PORT (9145, 0 = off). */
typedef struct { const char *host, *admin_host; int port, admin_port; } fh_ports;
void fh_ports_get(fh_ports *p);
/* Makes PORT and ADMIN_PORT this process's for its life (a lock per port)
 * and checks that nothing listens on them; logs "PORT 3000 is in use by
 * another process" and returns -1 otherwise.  Called once by a master (or by
 * a worker running without one) before any listener is opened. */
int fh_ports_claim(void);
/* Removes the lock files at a clean exit (a killed master leaves them; they
 * are harmless, the kernel dropped the locks). */
void fh_ports_release(void);

/* core/watch.c: calls `on_change` (debounced) when a .lua file under the
 * app's folder, its subfolders or `extra_dir` changes. */
int fh_watch_start(uv_loop_t *loop, const char *app, void (*on_change)(void));

#endif

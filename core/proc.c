/* Process identity (see proc.h): set once at start, read everywhere. */
#include "proc.h"
#include <unistd.h>

static struct {
  uv_loop_t *loop;
  int worker_id, node_id;
  int master_pid; /* 0 when running without a master */
} fh_proc__self = {.worker_id = -1};

void fh_proc_set(uv_loop_t *loop, int worker_id, int node_id, int master_pid) {
  fh_proc__self.loop = loop;
  fh_proc__self.worker_id = worker_id;
  fh_proc__self.node_id = node_id;
  fh_proc__self.master_pid = master_pid;
}

uv_loop_t *fh_loop(void) { return fh_proc__self.loop; }
int fh_worker_id(void) { return fh_proc__self.worker_id; }
int fh_node_id(void) { return fh_proc__self.node_id; }
int fh_master_pid(void) { return fh_proc__self.master_pid ? fh_proc__self.master_pid : (int)getpid(); }

/*
 * Process identity: the loop, the worker id, the node id and the master pid.
 *
 * A leaf: it includes nothing of flashhost's but this header, only libuv and
 * libc, so logging, ids and every binding can ask "which process am I" without
 * reaching into the worker or the master.  The process's entry point (worker
 * or master) sets it once at start; before that the answers are those of a
 * process that is no worker: no loop, worker -1, node 0, master = itself.
 */
#ifndef FH_PROC_H
#define FH_PROC_H

#include <uv.h>

/* Called once at start, before the loop runs.  `master_pid` 0: no master
 * supervises this process. */
void fh_proc_set(uv_loop_t *loop, int worker_id, int node_id, int master_pid);

uv_loop_t *fh_loop(void);
int fh_worker_id(void);   /* 0..N-1 in a worker, -1 in the master */
int fh_node_id(void);     /* NODE_ID, 0..31 */
int fh_master_pid(void);  /* the supervising master, or this process when there is none */

#endif

/* Generations: one Lua state with one loaded app (internal to the runtime). */
#ifndef FH_GEN_H
#define FH_GEN_H
#include "fh.h"

typedef void (*fh_gen_boot_cb)(fh_gen *g, int ok, const char *err);
typedef void (*fh_gen_retired_cb)(fh_gen *g);

/* Builds a Lua state, loads `app_path` and runs the app's start hook in a
 * task; `on_boot` reports the outcome.  Returns NULL if the state cannot be
 * built at all (out of memory, missing runtime facade). */
fh_gen *fh_gen_new(const char *app_path, fh_gen_boot_cb on_boot);

/* Makes g the generation that receives new requests. */
void fh_gen_set_current(fh_gen *g);

/* Tells g to stop: cuts short its waits (but those through_stop), runs the
 * app's stop hook, and calls `on_retired` (from a fresh loop iteration) once
 * no task of g is left; then g may be freed with fh_gen_free. */
void fh_gen_stop(fh_gen *g, fh_gen_retired_cb on_retired);
void fh_gen_free(fh_gen *g);

int fh_gen_id(fh_gen *g);
/* True until the boot outcome was reported (it may be reported during fh_gen_new). */
int fh_gen_booting(fh_gen *g);
int fh_gen_inflight(fh_gen *g);
int fh_gen_accepts(fh_gen *g);
void fh_gen_task_started(fh_gen *g);
void fh_gen_task_done(fh_gen *g);
/* Pushes field `name` of the runtime facade table onto g's main stack. */
void fh_gen_push_runtime(fh_gen *g, const char *name);
/* Called by flashhost.core.boot_done from the boot task. */
void fh_gen_booted(fh_gen *g, int ok, const char *err);

/* The head of g's list of waits (core/sched.c keeps it). */
fh_wait **fh_gen_waits(fh_gen *g);
/* core/sched.c: cuts short every wait of g that is not through_stop, with
 * FH_WAIT_STOPPING, through its binding's cancel hook. */
void fh_waits_stop(fh_gen *g);
/* core/sched.c: ends every wait of g, resuming nothing (FH_WAIT_GONE). */
void fh_waits_forget(fh_gen *g);

#endif

/* flashhost.core's hook into the process that hosts it (core/host.c). */
#ifndef FH_HOST_H
#define FH_HOST_H

/* core.run_done(code) hands `code` to this hook: the process entry point
 * registers it at start (the worker, whose exit code it becomes), so the
 * binding does not call up into the worker. */
typedef void (*fh_core_exit_hook)(int code);
void fh_core_set_exit_hook(fh_core_exit_hook hook);

#endif

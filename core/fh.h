/*
 * flashhost runtime: shared declarations.
 *
 * One process = one libuv loop (fh_loop()) and, at any moment, one current
 * Lua "generation" (a lua_State with the app loaded).  A hot reload builds a
 * new generation, switches to it, and lets the old one finish its tasks and
 * retire before closing.
 *
 * Every I/O binding follows one yield convention (see fh_wait_begin):
 *
 *     static int l_thing_call(lua_State *L) {
 *         ...check arguments (luaL_check* raises on misuse)...
 *         req->co = fh_wait_begin(L);          raises if not yieldable
 *         start_io(req);                       completion calls on_done
 *         return lua_yield(L, 0);
 *     }
 *     static void on_done(req) {
 *         if (!req->co) { free(req); return; } the waiter gave up (timeout)
 *         lua_pushnil(req->co); lua_pushstring(req->co, "timeout"); ...
 *         fh_wait_resume(req->co, n);
 *     }
 *
 * A task that waits for something other than its own I/O (a deadline, a
 * wake-up by another task, a client becoming ready, a flush) waits through
 * the one timed-wait record, fh_wait (core/sched.c):
 *
 *     w = fh_wait_start(L, ms, through_stop, &queue, cancel_hook, data);
 *     if (!w) return fh_wait_push_reason(L, FH_WAIT_STOPPING);
 *     return lua_yield(L, 0);
 *     ...
 *     co = fh_wait_take(fh_waitq_head(&queue));   the event came: answer it
 *     if (co) { push values; fh_wait_resume(co, n); }
 *
 * The record pins nothing itself (a task stays pinned until it ends), holds
 * the optional deadline, sits on its generation's list and, optionally, on
 * the binding's FIFO queue.  It ends exactly once: taken by the binding, or
 * cut short by the deadline, the generation's stop (unless through_stop) or
 * fh_wait_cancel, in which case the binding's cancel hook pushes the answer.
 * Once ended nothing can reach it, so a late wake-up is a no-op.
 *
 * Failures of the outside world come back as `nil, "reason", "kind"`
 * (FH_KIND_* below: one short fixed word, or the server's own error name);
 * misuse raises.
 */
#ifndef FH_H
#define FH_H

#include <stdint.h>
#include <stddef.h>
#include <uv.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#define FH_VERSION "0.1.0"

/* ---- process (core/proc.c, a leaf) ------------------------------------ */

#include "proc.h" /* fh_loop, fh_worker_id, fh_node_id, fh_master_pid */

/* ---- logging (core/log.c) --------------------------------------------- */

enum { FH_LOG_DEBUG = 0, FH_LOG_INFO, FH_LOG_WARN, FH_LOG_ERROR };
void fh_log_init(void);                     /* reads LOG_LEVEL */
int fh_log_enabled(int level);
/* Writes one JSON log line to stderr; `msg` is plain text (escaped here). */
void fh_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Writes an already JSON-encoded object as one line (used by the Lua logger). */
void fh_log_raw(const char *json, size_t len);
const char *fh_log_level_name(int level);

/* ---- clocks and ids (core/ids.c) ----------------------------------------- */

int64_t fh_now_ms(void);        /* wall clock, epoch milliseconds */
uint64_t fh_mono_ns(void);      /* monotonic */
/* Snowflake: 41 bits ms since 2024-01-01, 5 bits node, 5 bits worker, 12 bits sequence. */
uint64_t fh_id_next(void);
#define FH_ID_BLOCK 256
uint64_t fh_id_block(void); /* the first of FH_ID_BLOCK fresh ids; a multiple of FH_ID_BLOCK */

/* ---- generations (core/gen.c) ----------------------------------------- */

typedef struct fh_gen fh_gen;

/* Finds the generation that owns a Lua state or any of its threads. */
fh_gen *fh_gen_of(lua_State *L);
/* True once the generation has been told to stop (reload or shutdown). */
int fh_gen_stopping(fh_gen *g);
/* The generation that receives new requests. */
fh_gen *fh_gen_current(void);
lua_State *fh_gen_L(fh_gen *g);

/* ---- coroutine scheduling (core/sched.c) ------------------------------ */

/*
 * Starts a task: a new coroutine in g running the function on top of g's
 * main stack with `nargs` arguments below it (function first, as lua_call).
 * The task counts as in-flight work of g until it returns or fails.
 * Returns 0, or -1 if the generation refuses new work.
 */
int fh_task_spawn(fh_gen *g, lua_State *from, int nargs);
/* Same, but the task runs at once even when called from Lua (see sched.c). */
int fh_task_spawn_now(fh_gen *g, lua_State *from, int nargs);

/* Pins nothing (tasks are pinned until they end); checks that the running
 * coroutine may yield and returns it. Raises a Lua error otherwise. */
lua_State *fh_wait_begin(lua_State *L);

/* ---- timed waits (core/sched.c) ------------------------------------------ */

typedef struct fh_wait fh_wait;
/* A binding's FIFO of waits (zero-initialise it); a wait leaves it when it ends. */
typedef struct fh_waitq { fh_wait *head, *tail; } fh_waitq;

/* Why a wait was cut short. */
enum { FH_WAIT_TIMEOUT = 1, FH_WAIT_STOPPING, FH_WAIT_CLOSED, FH_WAIT_GONE };

/* The binding's cancel hook: the wait ended early for `why` and is already
 * off every list (fh_wait_data / fh_wait_arg still work; w is released
 * when the hook returns).  It pushes the answer on `co` and returns how many
 * values it pushed; the task is then resumed with them.  With FH_WAIT_GONE
 * (the Lua state is closing) `co` is NULL: forget w, push nothing, return 0. */
typedef int (*fh_wait_cancel_fn)(fh_wait *w, lua_State *co, int why);

/* Starts a wait of the running task (raises outside a task, like
 * fh_wait_begin).  `ms` < 0: no deadline.  `through_stop`: a generation
 * stop does not cut it.  `q` (may be NULL) gets it at its tail.  `cancel`
 * NULL answers nil, reason, kind (fh_wait_push_reason).  Returns NULL when
 * the generation is stopping and the wait is not through_stop: answer at
 * once.  Otherwise the caller returns lua_yield(L, 0). */
fh_wait *fh_wait_start(lua_State *L, lua_Number ms, int through_stop, fh_waitq *q,
                       fh_wait_cancel_fn cancel, void *data);
/* The task waiting on w; the binding's data; a small integer of the binding's. */
lua_State *fh_wait_task(const fh_wait *w);
void *fh_wait_data(const fh_wait *w);
int fh_wait_arg(const fh_wait *w);
void fh_wait_set_arg(fh_wait *w, int arg);
/* Ends w without its hook and returns its task, for the caller to push the
 * answer on and fh_wait_resume.  NULL w: returns NULL (nobody waits). */
lua_State *fh_wait_take(fh_wait *w);
/* Ends w early for `why` (FH_WAIT_CLOSED, ...): its hook answers. */
void fh_wait_cancel(fh_wait *w, int why);
/* Ends w without resuming anything (its hook sees FH_WAIT_GONE). */
void fh_wait_forget(fh_wait *w);
fh_wait *fh_waitq_head(const fh_waitq *q);
/* Moves every wait of `from` to the empty `to` (to answer a whole queue
 * while new waits queue up behind in `from`). */
void fh_waitq_move(fh_waitq *from, fh_waitq *to);
/* Ends every wait now in q for `why`; FH_WAIT_GONE resumes nothing. */
void fh_waitq_cancel(fh_waitq *q, int why);
/* Pushes nil, reason, kind for `why` ("timeout", "stopping", "closed") and returns 3. */
int fh_wait_push_reason(lua_State *co, int why);

/* Resumes a coroutine suspended by fh_wait_begin with `nres` values that the
 * caller pushed on `co`.  Safe to call from any libuv callback; when called
 * while Lua code is running (e.g. from a __gc), the resume is deferred to the
 * next loop iteration. */
void fh_wait_resume(lua_State *co, int nres);

/* Runs `fn` in protected mode on g's main state (no yielding); logs errors. */
int fh_pcall(lua_State *L, int nargs, int nres);

void fh_sched_init(uv_loop_t *loop);
void fh_sched_close(void);

/* ---- modules: each binding exports one open function ------------------- */

int luaopen_flashhost_core(lua_State *L);     /* core/host.c */
int luaopen_flashhost_timer(lua_State *L);    /* core/timer.c */
int luaopen_flashhost_http(lua_State *L);     /* core/http_lua.c */
int luaopen_flashhost_redis_driver(lua_State *L);  /* core/redis.c */
int luaopen_flashhost_kafka_driver(lua_State *L);  /* core/kafka.c */
int luaopen_flashhost_mysql_driver(lua_State *L);  /* core/mysql.c */
int luaopen_flashhost_jwt(lua_State *L);      /* core/jwt.c */
int luaopen_flashhost_crypto(lua_State *L);   /* core/crypto.c */
int luaopen_flashhost_metrics_store(lua_State *L); /* core/metrics.c */

/* Embedded Lua sources (generated from core/lua/ at build time). */
typedef struct { const char *name; const char *chunkname; const char *src; size_t len; } fh_embedded_t;
extern const fh_embedded_t fh_embedded[];

/* Small helpers shared by the bindings (core/luautil.c). */
/*
 * Error kinds: the third value of a failure, one fixed word a caller can test
 * instead of searching the message (DESIGN.md has the table).  Servers' own
 * error names (Redis "WRONGTYPE", MySQL "ER_DUP_ENTRY", Kafka broker errors)
 * are kinds too.
 */
#define FH_KIND_TIMEOUT "timeout"             /* no answer in time */
#define FH_KIND_CLOSED "closed"               /* closed by us, or the connection was lost */
#define FH_KIND_REFUSED "refused"             /* a connection could not be made */
#define FH_KIND_BUSY "busy"                   /* a pool, queue or pipeline is full */
#define FH_KIND_NOT_CONNECTED "not_connected" /* no connection right now (reconnecting) */
#define FH_KIND_STOPPING "stopping"           /* the generation stops */

/* Pushes nil, msg, kind and returns 3: the "world failed" answer. */
int fh_push_fail(lua_State *L, const char *kind, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Pushes nil, msg and returns 2 (for callers that have no kind to give). */
int fh_push_error(lua_State *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Creates (once) a metatable `name` with methods and __index = methods. */
void fh_new_class(lua_State *L, const char *name, const luaL_Reg *methods);

#endif

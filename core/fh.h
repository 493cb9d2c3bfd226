/*
 * flashhost runtime: shared declarations.
 *
 * One process = one libuv loop (fh_loop()) and, at any moment, one current
 * Lua "generation" (a lua_State with the app loaded).  A hot reload builds a
 * new generation, switches to it, and lets the old one drain before closing.
 *
 * Every I/O binding follows one yield convention (see fh_wait_begin):
 *
 *     static int l_thing(lua_State *L) {
 *         ...check arguments (luaL_check* raises on misuse)...
 *         req->co = fh_wait_begin(L);          raises if not yieldable
 *         start_io(req);                       completion calls on_done
 *         return lua_yield(L, 0);
 *     }
 *     static void on_done(req) {
 *         if (!req->co) { free(req); return; } the waiter gave up (timeout)
 *         lua_pushnil(req->co); lua_pushstring(req->co, "timeout");
 *         fh_wait_resume(req->co, 2);
 *     }
 *
 * Failures of the outside world come back as `nil, "reason"`; misuse raises.
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

/* ---- clocks and ids (core/clock.c, core/ids.c) ------------------------- */

int64_t fh_now_ms(void);        /* wall clock, epoch milliseconds */
uint64_t fh_mono_ns(void);      /* monotonic */
/* Snowflake: 41 bits ms since 2024-01-01, 5 bits node, 5 bits worker, 12 bits sequence. */
uint64_t fh_id_next(void);

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
int luaopen_flashhost_metrics_store(lua_State *L); /* core/metrics.c */

/* Embedded Lua sources (generated from core/lua/ at build time). */
typedef struct { const char *name; const char *chunkname; const char *src; size_t len; } fh_embedded_t;
extern const fh_embedded_t fh_embedded[];

/* Small helpers shared by the bindings (core/luautil.c). */
/* Pushes nil, msg and returns 2: the "world failed" answer. */
int fh_push_error(lua_State *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Creates (once) a metatable `name` with methods and __index = methods. */
void fh_new_class(lua_State *L, const char *name, const luaL_Reg *methods);

#endif

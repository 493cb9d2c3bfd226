/* hiredis 0.14.1 async contexts driven by a libuv loop (core/redis_uv.c). */
#ifndef FH_REDIS_UV_H
#define FH_REDIS_UV_H
#include <uv.h>
#include <hiredis/async.h>

/*
 * Hooks `ac` to `loop` with one uv_poll on the context's socket.  Call it
 * right after redisAsyncConnect and before redisAsyncSetConnectCallback
 * (which asks for a write event at once).  Returns REDIS_OK, or REDIS_ERR if
 * the context already has event hooks or the poll cannot be created; on
 * REDIS_ERR nothing was attached and the caller frees the context.
 *
 * Unlike hiredis 0.14's adapters/libuv.h, a socket error reported by libuv
 * (non-zero poll status) is handed to hiredis as the events it was waiting
 * for, so a refused connect or a reset reaches the connect, reply and
 * disconnect callbacks instead of leaving the context hanging.
 */
int fh_redis_uv_attach(redisAsyncContext *ac, uv_loop_t *loop);

#endif

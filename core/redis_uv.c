/*
 * libuv glue for hiredis 0.14.1 async contexts.
 *
 * hiredis asks for read/write interest through five hooks; we keep one
 * uv_poll_t per context.  The glue state lives in its own allocation because
 * hiredis calls `cleanup` while it frees the context, and libuv only lets go
 * of the poll handle in a later close callback.
 */
#include "redis_uv.h"
#include <stdlib.h>

typedef struct fh_redis_uv__redis_uv {
  redisAsyncContext *ac; /* NULL once hiredis ran cleanup: the context is going away */
  uv_poll_t poll;
  int events;            /* UV_READABLE | UV_WRITABLE that hiredis asked for */
} fh_redis_uv__redis_uv;

static void fh_redis_uv__on_poll(uv_poll_t *h, int status, int events) {
  fh_redis_uv__redis_uv *e = h->data;
  /* libuv reports a socket error (refused connect, reset) as a negative
   * status with no events, and stops the handle.  hiredis only learns about
   * it by trying the I/O it was waiting for, so pretend those events fired;
   * hiredis re-arms reads itself when the connection is still usable. */
  int ev = status < 0 ? e->events : events;
  /* Each handler may free the context (cleanup clears e->ac), so test
   * again before the second one. */
  if (e->ac && (ev & UV_READABLE)) redisAsyncHandleRead(e->ac);
  if (e->ac && (ev & UV_WRITABLE)) redisAsyncHandleWrite(e->ac);
}

static void fh_redis_uv__update(fh_redis_uv__redis_uv *e, int events) {
  if (events == e->events && uv_is_active((uv_handle_t *)&e->poll)) return;
  e->events = events;
  if (events) uv_poll_start(&e->poll, events, fh_redis_uv__on_poll);
  else uv_poll_stop(&e->poll);
}

static void fh_redis_uv__add_read(void *p) { fh_redis_uv__redis_uv *e = p; fh_redis_uv__update(e, e->events | UV_READABLE); }
static void fh_redis_uv__del_read(void *p) { fh_redis_uv__redis_uv *e = p; fh_redis_uv__update(e, e->events & ~UV_READABLE); }
static void fh_redis_uv__add_write(void *p) { fh_redis_uv__redis_uv *e = p; fh_redis_uv__update(e, e->events | UV_WRITABLE); }
static void fh_redis_uv__del_write(void *p) { fh_redis_uv__redis_uv *e = p; fh_redis_uv__update(e, e->events & ~UV_WRITABLE); }

static void fh_redis_uv__free_cb(uv_handle_t *h) { free(h->data); }

static void fh_redis_uv__cleanup(void *p) {
  fh_redis_uv__redis_uv *e = p;
  e->ac = NULL;
  /* uv_close stops watching the fd now; hiredis closes the socket right
   * after this hook returns. */
  uv_close((uv_handle_t *)&e->poll, fh_redis_uv__free_cb);
}

int fh_redis_uv_attach(redisAsyncContext *ac, uv_loop_t *loop) {
  if (ac->ev.data != NULL) return REDIS_ERR;
  fh_redis_uv__redis_uv *e = calloc(1, sizeof *e);
  if (!e) return REDIS_ERR;
  if (uv_poll_init(loop, &e->poll, ac->c.fd) != 0) {
    free(e);
    return REDIS_ERR;
  }
  e->poll.data = e;
  e->ac = ac;
  ac->ev.addRead = fh_redis_uv__add_read;
  ac->ev.delRead = fh_redis_uv__del_read;
  ac->ev.addWrite = fh_redis_uv__add_write;
  ac->ev.delWrite = fh_redis_uv__del_write;
  ac->ev.cleanup = fh_redis_uv__cleanup;
  ac->ev.data = e;
  return REDIS_OK;
}

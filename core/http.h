/* The HTTP/1.1 server (internal to the runtime). */
#ifndef FH_HTTP_H
#define FH_HTTP_H
#include "fh.h"

typedef struct fh_conn fh_conn;

typedef struct {
  size_t max_header;      /* request line + headers, bytes (431 past it) */
  size_t max_body;        /* body bytes (413 past it) */
  uint64_t read_timeout;  /* ms from a request's first byte to its end (408) */
  uint64_t idle_timeout;  /* ms a keep-alive connection may sit idle */
} fh_http_limits;

/* Reads HTTP_MAX_HEADER, HTTP_MAX_BODY, HTTP_READ_TIMEOUT_MS, HTTP_IDLE_TIMEOUT_MS. */
void fh_http_init(void);
const fh_http_limits *fh_http_limits_get(void);

/* What runs a complete request: the layer above (the worker) plugs it in at
 * start, so the server knows nothing of generations or tasks.  It hands c to
 * a responder (fh_http_push_responder) and returns 0, or returns the status
 * the server refuses the request with (400, 503).  Without one every request
 * gets 503. */
typedef int (*fh_http_handler)(fh_conn *c);
void fh_http_set_handler(fh_http_handler handler);
/* Pushes the request of c as a table: method, path, query, headers, body,
 * listener.  Returns -1 (nothing pushed) if its target has no path. */
int fh_http_push_request(lua_State *L, fh_conn *c);

/* Opens a SO_REUSEPORT listener (every worker binds the same port and the
 * kernel spreads connections).  `kind` names the route table ("public",
 * "admin").  Returns 0 or a negative libuv error. */
int fh_http_listen(const char *host, int port, const char *kind);

/* Stops accepting, closes idle connections and lets busy ones finish their
 * current request with Connection: close.  `on_done` runs once no
 * connection is left. */
void fh_http_drain(void (*on_done)(void));
int fh_http_conn_count(void);

/* A responder now holds c: c stays allocated until it answers or is released. */
void fh_conn_hold(fh_conn *c);
/* Called by the Lua responder (core/http_lua.c).  Takes ownership of `buf`
 * (malloc'd), writes it, then goes on with the next pipelined request. */
void fh_conn_respond(fh_conn *c, char *buf, size_t len);
/* The responder is gone without answering: drop the connection. */
void fh_conn_release(fh_conn *c);
/* Whether the response should carry Connection: close. */
int fh_conn_closing_after(fh_conn *c);
/* Pushes a userdata answering the request of c, which then holds c (core/http_lua.c). */
void fh_http_push_responder(lua_State *L, fh_conn *c);

#endif

/*
 * HTTP/1.1 server: listeners, connections and request parsing (libhttp-parser).
 *
 * A connection runs one request at a time.  When a request is complete the
 * parser is paused and reading stops; pipelined bytes already received wait
 * in `pending`.  After the response is written the parser resumes on those
 * bytes, so responses always leave in request order and a client cannot make
 * us buffer without bound.
 *
 * Limits: header bytes (431), body bytes (413), malformed input (400), a
 * request that takes too long to arrive (408), idle keep-alive connections
 * are closed.  Every error answer closes the connection, the way nginx's
 * lingering close does: parsing stops, the answer is written, the write side
 * is shut down, and what the client still sends is read and dropped until it
 * closes, FH_LINGER_MS pass or FH_LINGER_MAX_BYTES arrive.  Closing with
 * unread bytes would make the kernel reset the connection, and a client that
 * writes its whole request before reading would see the reset, not the answer.
 */
#include "http.h"
#include <http_parser.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <stdio.h>
#include <errno.h>
#include <unistd.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>

#define FH_MAX_HEADERS 100
/* Bounds of a lingering close, from the refusal on: a client that never
 * stops sending is cut off after this long or this many bytes. */
#define FH_LINGER_MS 2000
#define FH_LINGER_MAX_BYTES (4u << 20)

typedef struct { char *p; size_t len, cap; } fh_http__buf;
typedef struct { size_t name_off, name_len, val_off, val_len; } fh_http__hdr;

typedef struct fh_http__listener {
  uv_tcp_t tcp;
  const char *kind;
  struct fh_http__listener *next;
} fh_http__listener;

struct fh_conn {
  uv_tcp_t tcp;
  uv_timer_t timer;
  uv_shutdown_t shutdown;
  http_parser parser;
  const char *kind;
  int handles_open;      /* tcp + timer; freed when both closed and no responder */
  unsigned closing : 1, busy : 1, responder : 1, in_message : 1, keep_alive : 1, reading : 1;
  unsigned hdr_in_value : 1;
  unsigned lingering : 1; /* refused: answer, shut down writes, drop what arrives */
  size_t linger_bytes;
  int error_status;
  fh_http__buf pending;       /* received, not yet parsed */
  fh_http__buf url, body, hbuf;
  fh_http__hdr hdrs[FH_MAX_HEADERS];
  int nhdrs;
  size_t header_bytes;
  struct fh_conn *prev, *next;
};

static fh_http_limits fh_http__limits;
static http_parser_settings fh_http__settings;
static fh_http__listener *fh_http__listeners;
static fh_conn *fh_http__conns;
static int fh_http__nconns;
static fh_http_handler fh_http__handler;
static int fh_http__draining;
static void (*fh_http__drain_done)(void);
static char fh_http__readbuf[65536];

static void fh_http__conn_close(fh_conn *c);
static void fh_http__parse(fh_conn *c, const char *data, size_t len);
static void fh_http__start_reading(fh_conn *c);

/* ---- small buffers ----------------------------------------------------- */

static int fh_http__buf_add(fh_http__buf *b, const char *p, size_t n) {
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n) cap *= 2;
    char *np = realloc(b->p, cap);
    if (!np) return -1;
    b->p = np; b->cap = cap;
  }
  memcpy(b->p + b->len, p, n);
  b->len += n;
  return 0;
}

static void fh_http__buf_free(fh_http__buf *b) { free(b->p); b->p = NULL; b->len = b->cap = 0; }

static uint64_t fh_http__env_u64(const char *name, uint64_t dflt) {
  const char *v = getenv(name);
  if (!v || !*v) return dflt;
  char *end;
  unsigned long long n = strtoull(v, &end, 10);
  return *end ? dflt : (uint64_t)n;
}

/* ---- parser callbacks --------------------------------------------------- */

static int fh_http__over_header_limit(fh_conn *c, size_t more) {
  c->header_bytes += more;
  if (c->header_bytes > fh_http__limits.max_header) { c->error_status = 431; return 1; }
  return 0;
}

static void fh_http__on_timer(uv_timer_t *t);

static int fh_http__on_message_begin(http_parser *p) {
  fh_conn *c = p->data;
  c->in_message = 1;
  c->url.len = c->body.len = c->hbuf.len = 0;
  c->nhdrs = 0;
  c->header_bytes = 0;
  c->hdr_in_value = 1; /* so the first field starts a new header */
  uv_timer_start(&c->timer, fh_http__on_timer, fh_http__limits.read_timeout, 0);
  return 0;
}

static int fh_http__on_url(http_parser *p, const char *at, size_t len) {
  fh_conn *c = p->data;
  if (fh_http__over_header_limit(c, len)) return 1;
  return fh_http__buf_add(&c->url, at, len);
}

static int fh_http__on_header_field(http_parser *p, const char *at, size_t len) {
  fh_conn *c = p->data;
  if (fh_http__over_header_limit(c, len)) return 1;
  if (c->hdr_in_value) {
    if (c->nhdrs == FH_MAX_HEADERS) { c->error_status = 431; return 1; }
    c->hdrs[c->nhdrs++] = (fh_http__hdr){c->hbuf.len, 0, 0, 0};
    c->hdr_in_value = 0;
  }
  c->hdrs[c->nhdrs - 1].name_len += len;
  return fh_http__buf_add(&c->hbuf, at, len);
}

static int fh_http__on_header_value(http_parser *p, const char *at, size_t len) {
  fh_conn *c = p->data;
  if (fh_http__over_header_limit(c, len)) return 1;
  if (!c->hdr_in_value) {
    c->hdrs[c->nhdrs - 1].val_off = c->hbuf.len;
    c->hdr_in_value = 1;
  }
  c->hdrs[c->nhdrs - 1].val_len += len;
  return fh_http__buf_add(&c->hbuf, at, len);
}

static const fh_http__hdr *fh_http__find_header(fh_conn *c, const char *name) {
  size_t n = strlen(name);
  for (int i = 0; i < c->nhdrs; i++)
    if (c->hdrs[i].name_len == n && strncasecmp(c->hbuf.p + c->hdrs[i].name_off, name, n) == 0)
      return &c->hdrs[i];
  return NULL;
}

static int fh_http__on_headers_complete(http_parser *p) {
  fh_conn *c = p->data;
  /* Refuse an announced oversized body before reading any of it. */
  if (!(p->flags & F_CHUNKED) && p->content_length != ULLONG_MAX &&
      p->content_length > fh_http__limits.max_body) {
    c->error_status = 413;
    return -1;
  }
  const fh_http__hdr *e = fh_http__find_header(c, "expect");
  if (e && e->val_len == 12 && strncasecmp(c->hbuf.p + e->val_off, "100-continue", 12) == 0) {
    static char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    uv_buf_t b = uv_buf_init(cont, sizeof cont - 1);
    uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
  }
  return 0;
}

static int fh_http__on_body(http_parser *p, const char *at, size_t len) {
  fh_conn *c = p->data;
  if (c->body.len + len > fh_http__limits.max_body) { c->error_status = 413; return 1; }
  return fh_http__buf_add(&c->body, at, len);
}

int fh_http_push_request(lua_State *L, fh_conn *c) {
  struct http_parser_url u;
  http_parser_url_init(&u);
  if (http_parser_parse_url(c->url.p, c->url.len, c->parser.method == HTTP_CONNECT, &u) != 0 ||
      !(u.field_set & (1 << UF_PATH)))
    return -1;
  lua_createtable(L, 0, 6);
  lua_pushstring(L, http_method_str(c->parser.method));
  lua_setfield(L, -2, "method");
  lua_pushlstring(L, c->url.p + u.field_data[UF_PATH].off, u.field_data[UF_PATH].len);
  lua_setfield(L, -2, "path");
  if (u.field_set & (1 << UF_QUERY)) {
    lua_pushlstring(L, c->url.p + u.field_data[UF_QUERY].off, u.field_data[UF_QUERY].len);
    lua_setfield(L, -2, "query");
  }
  lua_createtable(L, 0, c->nhdrs);
  for (int i = 0; i < c->nhdrs; i++) {
    char name[256];
    size_t n = c->hdrs[i].name_len < sizeof name - 1 ? c->hdrs[i].name_len : sizeof name - 1;
    for (size_t k = 0; k < n; k++) {
      char ch = c->hbuf.p[c->hdrs[i].name_off + k];
      name[k] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
    }
    name[n] = 0;
    lua_getfield(L, -1, name);
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      lua_pushlstring(L, c->hbuf.p + c->hdrs[i].val_off, c->hdrs[i].val_len);
    } else { /* a repeated header: join the values as RFC 9110 allows */
      lua_pushliteral(L, ", ");
      lua_pushlstring(L, c->hbuf.p + c->hdrs[i].val_off, c->hdrs[i].val_len);
      lua_concat(L, 3);
    }
    lua_setfield(L, -2, name);
  }
  lua_setfield(L, -2, "headers");
  lua_pushlstring(L, c->body.p ? c->body.p : "", c->body.len);
  lua_setfield(L, -2, "body");
  lua_pushstring(L, c->kind);
  lua_setfield(L, -2, "listener");
  return 0;
}

static void fh_http__send_error(fh_conn *c, int status);

static int fh_http__on_message_complete(http_parser *p) {
  fh_conn *c = p->data;
  c->in_message = 0;
  c->keep_alive = http_should_keep_alive(p) ? 1 : 0;
  uv_timer_stop(&c->timer);
  http_parser_pause(p, 1);
  c->busy = 1;
  int refused = fh_http__handler ? fh_http__handler(c) : 503;
  if (refused) fh_http__send_error(c, refused);
  return 0;
}

/* ---- responses ----------------------------------------------------------- */

typedef struct { uv_write_t req; char *buf; fh_conn *c; } fh_http__write;

/* The FIN went out after a refusal; reading goes on until the client closes
 * or the linger bounds run out (fh_http__on_read, fh_http__on_timer). */
static void fh_http__after_shutdown(uv_shutdown_t *req, int status) {
  fh_conn *c = req->data;
  if (c->closing) return; /* cancelled by the close; the close frees */
  if (status < 0) fh_http__conn_close(c);
}

static void fh_http__after_write(uv_write_t *w, int status) {
  fh_http__write *wr = (fh_http__write *)w;
  fh_conn *c = wr->c;
  free(wr->buf);
  free(wr);
  c->busy = 0;
  if (c->closing) { fh_http__conn_close(c); return; }
  if (c->lingering) {
    c->shutdown.data = c;
    if (status < 0 || uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, fh_http__after_shutdown) != 0)
      fh_http__conn_close(c);
    return;
  }
  if (status < 0 || !c->keep_alive || fh_http__draining) { fh_http__conn_close(c); return; }
  /* Next request: first whatever was pipelined behind this one. */
  http_parser_pause(&c->parser, 0);
  if (c->pending.len > 0) {
    fh_http__buf rest = c->pending;
    c->pending = (fh_http__buf){0};
    fh_http__parse(c, rest.p, rest.len);
    fh_http__buf_free(&rest);
  }
  if (!c->busy && !c->closing) {
    if (!c->in_message) uv_timer_start(&c->timer, fh_http__on_timer, fh_http__limits.idle_timeout, 0);
    fh_http__start_reading(c);
  }
}

void fh_conn_respond(fh_conn *c, char *buf, size_t len) {
  c->responder = 0;
  if (c->closing) { free(buf); fh_http__conn_close(c); return; }
  fh_http__write *wr = malloc(sizeof *wr);
  if (!wr) { free(buf); fh_http__conn_close(c); return; }
  wr->buf = buf;
  wr->c = c;
  uv_buf_t b = uv_buf_init(buf, (unsigned)len);
  if (uv_write(&wr->req, (uv_stream_t *)&c->tcp, &b, 1, fh_http__after_write) != 0) {
    free(buf); free(wr);
    fh_http__conn_close(c);
  }
}

void fh_conn_hold(fh_conn *c) { c->responder = 1; }

void fh_conn_release(fh_conn *c) {
  c->responder = 0;
  fh_http__conn_close(c);
}

int fh_conn_closing_after(fh_conn *c) { return !c->keep_alive || fh_http__draining || c->closing; }

static const char *fh_http__reason(int status) {
  switch (status) {
    case 400: return "Bad Request";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 431: return "Request Header Fields Too Large";
    case 503: return "Service Unavailable";
    default: return "Error";
  }
}

static const char *fh_http__code(int status) {
  switch (status) {
    case 400: return "BAD_REQUEST";
    case 408: return "REQUEST_TIMEOUT";
    case 413: return "PAYLOAD_TOO_LARGE";
    case 431: return "HEADERS_TOO_LARGE";
    default: return "UNAVAILABLE";
  }
}

/* Protocol-level errors are answered here, without Lua, and close the
 * connection: after a framing error we cannot know where the next request
 * starts.  The close lingers (see the top of the file); reading goes on from
 * now, so a client blocked in its upload can finish it and read the answer. */
static void fh_http__send_error(fh_conn *c, int status) {
  char body[160], *buf = malloc(512);
  if (!buf) { fh_http__conn_close(c); return; }
  int bl = snprintf(body, sizeof body, "{\"error\":\"%s\",\"message\":\"%s\"}", fh_http__code(status),
                    fh_http__reason(status));
  int n = snprintf(buf, 512,
                   "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                   "Connection: close\r\n\r\n%s",
                   status, fh_http__reason(status), bl, body);
  c->keep_alive = 0;
  c->busy = 1;
  c->in_message = 0;
  c->lingering = 1;
  fh_http__buf_free(&c->pending);
  uv_timer_start(&c->timer, fh_http__on_timer, FH_LINGER_MS, 0);
  fh_http__start_reading(c);
  fh_conn_respond(c, buf, (size_t)n);
}

/* ---- connection lifetime ------------------------------------------------- */

static void fh_http__maybe_free(fh_conn *c) {
  if (c->handles_open > 0 || c->responder) return;
  fh_http__buf_free(&c->pending);
  fh_http__buf_free(&c->url);
  fh_http__buf_free(&c->body);
  fh_http__buf_free(&c->hbuf);
  free(c);
}

static void fh_http__on_handle_closed(uv_handle_t *h) {
  fh_conn *c = h->data;
  c->handles_open--;
  fh_http__maybe_free(c);
}

static void fh_http__conn_close(fh_conn *c) {
  if (!c->closing) {
    c->closing = 1;
    if (c->prev) c->prev->next = c->next; else fh_http__conns = c->next;
    if (c->next) c->next->prev = c->prev;
    fh_http__nconns--;
    uv_close((uv_handle_t *)&c->timer, fh_http__on_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, fh_http__on_handle_closed);
    if (fh_http__draining && fh_http__nconns == 0 && fh_http__drain_done) {
      void (*cb)(void) = fh_http__drain_done;
      fh_http__drain_done = NULL;
      cb();
    }
  } else {
    fh_http__maybe_free(c);
  }
}

static void fh_http__on_timer(uv_timer_t *t) {
  fh_conn *c = t->data;
  if (c->lingering) { fh_http__conn_close(c); return; } /* the linger bound */
  if (c->busy) return; /* a handler is running: its own deadlines apply */
  if (c->in_message) fh_http__send_error(c, 408);
  else fh_http__conn_close(c);
}

static void fh_http__parse(fh_conn *c, const char *data, size_t len) {
  size_t n = http_parser_execute(&c->parser, &fh_http__settings, data, len);
  if (c->lingering) return; /* a callback refused the request: the rest is dropped */
  enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
  if (e == HPE_PAUSED) {
    /* A request went to a handler; keep what follows it for later. */
    if (n < len && fh_http__buf_add(&c->pending, data + n, len - n) != 0) c->closing = 1;
    if (c->reading) { uv_read_stop((uv_stream_t *)&c->tcp); c->reading = 0; }
    return;
  }
  if (e != HPE_OK) {
    int status = c->error_status ? c->error_status : (e == HPE_HEADER_OVERFLOW ? 431 : 400);
    fh_http__send_error(c, status);
    return;
  }
  if (c->parser.upgrade || n != len) fh_http__send_error(c, 400); /* no upgrades, no CONNECT */
}

static void fh_http__alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  /* One shared buffer: every read is parsed (or copied to `pending`) at once. */
  *buf = uv_buf_init(fh_http__readbuf, sizeof fh_http__readbuf);
}

static void fh_http__on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  fh_conn *c = s->data;
  if (nread < 0) { fh_http__conn_close(c); return; }
  if (nread == 0 || c->closing) return;
  if (c->lingering) {
    c->linger_bytes += (size_t)nread;
    if (c->linger_bytes > FH_LINGER_MAX_BYTES) fh_http__conn_close(c);
    return;
  }
  if (c->busy) { /* cannot happen while reading is stopped, but stay safe */
    if (fh_http__buf_add(&c->pending, buf->base, (size_t)nread) != 0) fh_http__conn_close(c);
    return;
  }
  fh_http__parse(c, buf->base, (size_t)nread);
}

static void fh_http__start_reading(fh_conn *c) {
  if (c->reading || c->closing) return;
  if (uv_read_start((uv_stream_t *)&c->tcp, fh_http__alloc, fh_http__on_read) == 0) c->reading = 1;
  else fh_http__conn_close(c);
}

static void fh_http__on_connection(uv_stream_t *server, int status) {
  if (status < 0 || fh_http__draining) return;
  fh_http__listener *l = server->data;
  fh_conn *c = calloc(1, sizeof *c);
  if (!c) return;
  uv_tcp_init(fh_loop(), &c->tcp);
  uv_timer_init(fh_loop(), &c->timer);
  c->tcp.data = c->timer.data = c;
  c->handles_open = 2;
  c->kind = l->kind;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
    c->closing = 1;
    uv_close((uv_handle_t *)&c->timer, fh_http__on_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, fh_http__on_handle_closed);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  http_parser_init(&c->parser, HTTP_REQUEST);
  c->parser.data = c;
  c->next = fh_http__conns;
  if (fh_http__conns) fh_http__conns->prev = c;
  fh_http__conns = c;
  fh_http__nconns++;
  uv_timer_start(&c->timer, fh_http__on_timer, fh_http__limits.idle_timeout, 0);
  fh_http__start_reading(c);
}

/* ---- listeners ----------------------------------------------------------- */

void fh_http_init(void) {
  fh_http__limits.max_header = fh_http__env_u64("HTTP_MAX_HEADER", 8192);
  fh_http__limits.max_body = fh_http__env_u64("HTTP_MAX_BODY", 16384);
  fh_http__limits.read_timeout = fh_http__env_u64("HTTP_READ_TIMEOUT_MS", 10000);
  fh_http__limits.idle_timeout = fh_http__env_u64("HTTP_IDLE_TIMEOUT_MS", 60000);
  fh_http__settings = (http_parser_settings){
    .on_message_begin = fh_http__on_message_begin, .on_url = fh_http__on_url,
    .on_header_field = fh_http__on_header_field, .on_header_value = fh_http__on_header_value,
    .on_headers_complete = fh_http__on_headers_complete, .on_body = fh_http__on_body,
    .on_message_complete = fh_http__on_message_complete};
}

const fh_http_limits *fh_http_limits_get(void) { return &fh_http__limits; }

void fh_http_set_handler(fh_http_handler handler) { fh_http__handler = handler; }

int fh_http_listen(const char *host, int port, const char *kind) {
  struct sockaddr_in addr;
  int rc = uv_ip4_addr(host, port, &addr);
  if (rc) return rc;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int one = 1;
  /* libuv 1.44 cannot set SO_REUSEPORT itself, so the socket is made here. */
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0) { rc = -errno; close(fd); return rc; }
  fh_http__listener *l = calloc(1, sizeof *l);
  if (!l) { close(fd); return UV_ENOMEM; }
  uv_tcp_init(fh_loop(), &l->tcp);
  l->tcp.data = l;
  l->kind = kind;
  if ((rc = uv_tcp_open(&l->tcp, fd)) != 0 ||
      (rc = uv_listen((uv_stream_t *)&l->tcp, 4096, fh_http__on_connection)) != 0) {
    uv_close((uv_handle_t *)&l->tcp, (uv_close_cb)free);
    return rc;
  }
  l->next = fh_http__listeners;
  fh_http__listeners = l;
  return 0;
}

int fh_http_conn_count(void) { return fh_http__nconns; }

void fh_http_drain(void (*on_done)(void)) {
  fh_http__draining = 1;
  for (fh_http__listener *l = fh_http__listeners, *next; l; l = next) {
    next = l->next;
    uv_close((uv_handle_t *)&l->tcp, (uv_close_cb)free);
  }
  fh_http__listeners = NULL;
  fh_http__drain_done = on_done;
  for (fh_conn *c = fh_http__conns, *next; c; c = next) {
    next = c->next;
    /* idle or mid-upload: nothing owed; a lingering close ends by its own bounds */
    if (!c->busy && !c->lingering) fh_http__conn_close(c);
  }
  if (fh_http__nconns == 0 && fh_http__drain_done) {
    fh_http__drain_done = NULL;
    on_done();
  }
}

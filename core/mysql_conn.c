/*
 * flashhost.mysql.driver: the connection state machine (see mysql_int.h).
 * The Lua binding (core/mysql.c) starts operations; this file drives them
 * on the loop and hands the finished one back through fh_mysql_answer.
 */
#include "mysql_int.h"

#include <errmsg.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* ---- lifetime ------------------------------------------------------------ */

void fh_mysql_conn_maybe_free(fh_mysql_conn *c) {
  if (c->has_ud || c->handles > 0 || c->m || c->op != FH_MYSQL_IDLE) return;
  free(c->host);
  free(c->user);
  free(c->password);
  free(c->database);
  free(c->sql);
  free(c);
}

static void fh_mysql__timer_closed(uv_handle_t *h) {
  fh_mysql_conn *c = h->data;
  c->handles--;
  fh_mysql_conn_maybe_free(c);
}

static void fh_mysql__poll_closed(uv_handle_t *h) {
  fh_mysql_conn *c = h->data;
  free(h);
  c->handles--;
  fh_mysql_conn_maybe_free(c);
}

static void fh_mysql__close_handles(fh_mysql_conn *c) {
  if (c->handles_closing) return;
  c->handles_closing = 1;
  uv_close((uv_handle_t *)&c->wait_timer, fh_mysql__timer_closed);
  uv_close((uv_handle_t *)&c->deadline, fh_mysql__timer_closed);
  if (c->poll) {
    uv_close((uv_handle_t *)c->poll, fh_mysql__poll_closed);
    c->poll = NULL;
  }
}

static void fh_mysql__forget_secrets(fh_mysql_conn *c) {
  if (c->password) {
    memset(c->password, 0, strlen(c->password));
    free(c->password);
    c->password = NULL;
  }
  free(c->user);
  free(c->database);
  c->user = c->database = NULL;
}

/* ---- waiting on the socket ----------------------------------------------- */

static void fh_mysql__cont(fh_mysql_conn *c, int ready) {
  /* The connector may close the socket inside _cont: never leave a poll
   * running across the call. */
  if (c->poll) uv_poll_stop(c->poll);
  uv_timer_stop(&c->wait_timer);
  c->poll_fallback = 0;
  int st = 0;
  switch (c->op) {
    case FH_MYSQL_CONNECT: st = mysql_real_connect_cont(&c->ret_m, c->m, ready); break;
    case FH_MYSQL_QUERY: st = mysql_real_query_cont(&c->ret_int, c->m, ready); break;
    case FH_MYSQL_STORE:
    case FH_MYSQL_SKIP: st = mysql_store_result_cont(&c->ret_res, c->m, ready); break;
    case FH_MYSQL_NEXT: st = mysql_next_result_cont(&c->ret_int, c->m, ready); break;
    case FH_MYSQL_CLOSE: st = mysql_close_cont(c->m, ready); break;
    default: return;
  }
  if (st) fh_mysql_conn_wait(c, st);
  else fh_mysql_conn_advance(c);
}

static void fh_mysql__on_poll(uv_poll_t *p, int status, int events) {
  fh_mysql_conn *c = p->data;
  int ready = 0;
  /* libuv reports a socket error as a status (UV_EBADF) and stops the
   * handle; the connector learns about it only by trying, so say "both". */
  if (status < 0) {
    ready = MYSQL_WAIT_READ | MYSQL_WAIT_WRITE;
  } else {
    if (events & UV_READABLE) ready |= MYSQL_WAIT_READ;
    if (events & UV_WRITABLE) ready |= MYSQL_WAIT_WRITE;
    if (events & UV_PRIORITIZED) ready |= MYSQL_WAIT_EXCEPT;
  }
  fh_mysql__cont(c, ready);
}

static void fh_mysql__on_wait_timer(uv_timer_t *t) {
  fh_mysql_conn *c = t->data;
  fh_mysql__cont(c, c->poll_fallback ? c->fallback_events : MYSQL_WAIT_TIMEOUT);
}

/* Arms the watchers for the wait mask `st` returned by a _start/_cont. */
void fh_mysql_conn_wait(fh_mysql_conn *c, int st) {
  int events = 0;
  if (st & MYSQL_WAIT_READ) events |= UV_READABLE;
  if (st & MYSQL_WAIT_WRITE) events |= UV_WRITABLE;
  if (st & MYSQL_WAIT_EXCEPT) events |= UV_PRIORITIZED;
  /* The socket can change during connect (one per address tried): look it
   * up again after every suspension. */
  int fd = (int)mysql_get_socket(c->m);
  if (c->poll && c->poll_fd != fd) {
    /* Closed now, in the call that closed its socket (see fh_mysql_conn_done). */
    uv_close((uv_handle_t *)c->poll, fh_mysql__poll_closed);
    c->poll = NULL;
  }
  if (events && fd >= 0) {
    if (!c->poll) {
      uv_poll_t *p = malloc(sizeof *p);
      if (p && uv_poll_init_socket(fh_loop(), p, fd) == 0) {
        p->data = c;
        c->poll = p;
        c->poll_fd = fd;
        c->handles++;
      } else {
        free(p);
      }
    }
  }
  if (events && c->poll) {
    uv_poll_start(c->poll, events, fh_mysql__on_poll);
  } else if (events) {
    /* No way to watch the socket (out of memory): let the connector try
     * again shortly; it suspends again if nothing is ready yet. */
    c->poll_fallback = 1;
    c->fallback_events = st & (MYSQL_WAIT_READ | MYSQL_WAIT_WRITE | MYSQL_WAIT_EXCEPT);
    uv_timer_start(&c->wait_timer, fh_mysql__on_wait_timer, 5, 0);
    return;
  }
  if (st & MYSQL_WAIT_TIMEOUT)
    uv_timer_start(&c->wait_timer, fh_mysql__on_wait_timer, mysql_get_timeout_value_ms(c->m), 0);
}

/* ---- answering the caller ------------------------------------------------ */

static int fh_mysql__fatal(unsigned e) {
  if (e >= CR_MIN_ERROR && e <= CR_MAX_ERROR) return 1;
  switch (e) {
    case 1053: /* ER_SERVER_SHUTDOWN */
    case 1152: /* ER_ABORTING_CONNECTION */
    case 1153: /* ER_NET_PACKET_TOO_LARGE: the server drops the connection */
    case 1154: case 1155: case 1156: case 1157: case 1158: case 1159: case 1160:
    case 1161: /* ER_NET_* read/write errors */
    case 1184: /* ER_NEW_ABORTING_CONNECTION */
    case 1927: /* ER_CONNECTION_KILLED */
    case 4031: /* ER_CLIENT_INTERACTION_TIMEOUT */
      return 1;
    default:
      return 0;
  }
}

void fh_mysql_conn_set_error(fh_mysql_conn *c, unsigned no, const char *state, const char *msg) {
  c->err_no = no;
  snprintf(c->sqlstate, sizeof c->sqlstate, "%s", state ? state : "HY000");
  snprintf(c->err, sizeof c->err, "%s", msg && *msg ? msg : "unknown error");
}

static void fh_mysql__capture_error(fh_mysql_conn *c) {
  unsigned no = mysql_errno(c->m);
  fh_mysql_conn_set_error(c, no ? no : CR_UNKNOWN_ERROR, mysql_sqlstate(c->m), mysql_error(c->m));
}

/* The operation (connect or statement) is over: answer the caller, if it
 * still waits, as the very last step, because resuming it runs Lua code that
 * may start the next operation on this connection. */
void fh_mysql_conn_done(fh_mysql_conn *c) {
  int was_connect = c->op == FH_MYSQL_RESOLVE || c->op == FH_MYSQL_CONNECT;
  uv_timer_stop(&c->deadline);
  uv_timer_stop(&c->wait_timer);
  /* A failed operation may have closed the socket inside the connector.
   * Drop its (stopped) poll handle now, while the descriptor number is
   * still free: stopping or closing it later would take out of epoll
   * whatever handle reuses that number by then. */
  if (c->poll && (!c->m || (int)mysql_get_socket(c->m) != c->poll_fd)) {
    uv_close((uv_handle_t *)c->poll, fh_mysql__poll_closed);
    c->poll = NULL;
  }
  c->op = FH_MYSQL_IDLE;
  if (c->err_no) {
    if (fh_mysql__fatal(c->err_no) || !c->m || (int)mysql_get_socket(c->m) < 0) c->broken = 1;
  }
  lua_State *co = c->co;
  int *sync = c->sync_nres;
  c->co = NULL;
  c->sync_nres = NULL;
  int n = 0;
  if (co) {
    lua_checkstack(co, 8);
    n = fh_mysql_answer(co, c, was_connect);
  }
  if (c->res) mysql_free_result(c->res);
  c->res = NULL;
  free(c->sql);
  c->sql = NULL;
  c->err_no = 0;
  c->err[0] = 0;
  if (was_connect) fh_mysql__forget_secrets(c);
  /* Nobody holds a failed or abandoned connection: close it now.  A
   * close() that came while busy is carried out here too. */
  if (!c->has_ud || c->closed) fh_mysql_conn_close(c);
  if (!co) return;
  if (sync) *sync = n;
  else fh_wait_resume(co, n);
}

static void fh_mysql__on_deadline(uv_timer_t *t) {
  fh_mysql_conn *c = t->data;
  c->broken = 1;
  /* Cut the operation short: a shut-down socket polls ready at once and the
   * connector fails it with "lost connection"; fh_mysql_conn_done then cleans up. */
  if (c->op == FH_MYSQL_RESOLVE) {
    uv_cancel((uv_req_t *)&c->resolve);
  } else if (c->m) {
    int fd = (int)mysql_get_socket(c->m);
    if (fd >= 0) shutdown(fd, SHUT_RDWR);
  }
  lua_State *co = c->co;
  if (!co) return;
  c->co = NULL;
  lua_checkstack(co, 4);
  lua_pushnil(co);
  if (c->op == FH_MYSQL_RESOLVE || c->op == FH_MYSQL_CONNECT)
    lua_pushfstring(co, "timeout: no connection within %d ms", (int)c->timeout_ms);
  else
    lua_pushfstring(co, "timeout: no answer within %d ms", (int)c->timeout_ms);
  lua_pushinteger(co, 0);
  lua_pushliteral(co, "HY000");
  /* c stays alive: its operation is still in flight. */
  fh_wait_resume(co, 4);
}

void fh_mysql_conn_start_deadline(fh_mysql_conn *c, unsigned ms) {
  c->timeout_ms = ms;
  if (ms > 0) uv_timer_start(&c->deadline, fh_mysql__on_deadline, ms, 0);
}

/* ---- the state machine --------------------------------------------------- */

/* A phase finished without waiting: start the next one, or finish. */
void fh_mysql_conn_advance(fh_mysql_conn *c) {
  for (;;) {
    int st;
    switch (c->op) {
      case FH_MYSQL_CONNECT:
        if (!c->ret_m) fh_mysql__capture_error(c);
        else c->connected = 1;
        fh_mysql_conn_done(c);
        return;
      case FH_MYSQL_QUERY:
        if (c->ret_int != 0) { fh_mysql__capture_error(c); fh_mysql_conn_done(c); return; }
        c->op = FH_MYSQL_STORE;
        st = mysql_store_result_start(&c->ret_res, c->m);
        break;
      case FH_MYSQL_STORE:
      case FH_MYSQL_SKIP:
        /* NULL is also the answer of a statement without a result set. */
        if (!c->ret_res && mysql_errno(c->m)) { fh_mysql__capture_error(c); fh_mysql_conn_done(c); return; }
        if (c->op == FH_MYSQL_STORE) {
          c->res = c->ret_res;
          c->affected = mysql_affected_rows(c->m);
          c->insert_id = mysql_insert_id(c->m);
        } else if (c->ret_res) {
          mysql_free_result(c->ret_res);
        }
        c->ret_res = NULL;
        /* Unread result sets would make the next statement fail with
         * "commands out of sync"; read them now. */
        if (!mysql_more_results(c->m)) { fh_mysql_conn_done(c); return; }
        c->op = FH_MYSQL_NEXT;
        st = mysql_next_result_start(&c->ret_int, c->m);
        break;
      case FH_MYSQL_NEXT:
        if (c->ret_int > 0) { fh_mysql__capture_error(c); fh_mysql_conn_done(c); return; }
        if (c->ret_int < 0) { fh_mysql_conn_done(c); return; }
        c->op = FH_MYSQL_SKIP;
        st = mysql_store_result_start(&c->ret_res, c->m);
        break;
      case FH_MYSQL_CLOSE:
        /* mysql_close_cont returned 0: the handle is freed. */
        c->m = NULL;
        c->op = FH_MYSQL_IDLE;
        uv_timer_stop(&c->deadline);
        fh_mysql__close_handles(c);
        return;
      default:
        return;
    }
    if (st) { fh_mysql_conn_wait(c, st); return; }
  }
}

void fh_mysql_conn_start_connect(fh_mysql_conn *c) {
  c->op = FH_MYSQL_CONNECT;
  int st = mysql_real_connect_start(&c->ret_m, c->m, c->addr, c->user, c->password,
                                    c->database, c->port, NULL, 0);
  if (st) fh_mysql_conn_wait(c, st);
  else fh_mysql_conn_advance(c);
}

void fh_mysql_conn_on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *ai) {
  fh_mysql_conn *c = req->data;
  int ok = 0;
  /* One address is tried: IPv4 first, as servers often listen on 127.0.0.1
   * or 0.0.0.0 only while "localhost" may resolve to ::1 first. */
  struct addrinfo *pick = NULL;
  for (struct addrinfo *p = status == 0 ? ai : NULL; p; p = p->ai_next) {
    if (p->ai_family == AF_INET) { pick = p; break; }
    if (p->ai_family == AF_INET6 && !pick) pick = p;
  }
  if (pick) {
    const void *a = pick->ai_family == AF_INET6
                        ? (const void *)&((struct sockaddr_in6 *)pick->ai_addr)->sin6_addr
                        : (const void *)&((struct sockaddr_in *)pick->ai_addr)->sin_addr;
    ok = inet_ntop(pick->ai_family, a, c->addr, sizeof c->addr) != NULL;
  }
  uv_freeaddrinfo(ai);
  if (!ok || !c->co) {
    char msg[300];
    snprintf(msg, sizeof msg, "cannot resolve host '%s': %s", c->host,
             status ? uv_strerror(status) : "no address");
    fh_mysql_conn_set_error(c, CR_UNKNOWN_HOST, "HY000", msg);
    fh_mysql_conn_done(c);
    return;
  }
  fh_mysql_conn_start_connect(c);
}

/* Closes the connection once idle: a polite COM_QUIT on the loop when the
 * socket is healthy, a plain mysql_close (no I/O worth waiting for) when it
 * is already dead; then the libuv handles. */
void fh_mysql_conn_close(fh_mysql_conn *c) {
  c->closed = 1;
  if (c->op != FH_MYSQL_IDLE) return;
  if (c->m) {
    if (c->connected && !c->broken) {
      c->op = FH_MYSQL_CLOSE;
      fh_mysql_conn_start_deadline(c, 1000);
      int st = mysql_close_start(c->m);
      if (st) { fh_mysql_conn_wait(c, st); return; }
      c->op = FH_MYSQL_IDLE;
      uv_timer_stop(&c->deadline);
    } else {
      mysql_close(c->m);
    }
    c->m = NULL;
  }
  fh_mysql__close_handles(c);
}


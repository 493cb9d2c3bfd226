/*
 * flashhost.mysql.driver, internal: one MariaDB/MySQL connection driven by
 * the loop (core/mysql_conn.c), shared with its Lua binding (core/mysql.c).
 *
 * MariaDB Connector/C runs each blocking call as a coroutine of its own:
 * `_start` runs until the call would block and returns the events it waits
 * for; we watch the socket with a uv_poll (and a uv_timer for
 * MYSQL_WAIT_TIMEOUT) and hand what happened to `_cont`, until it returns 0.
 * A statement is three such calls in a row (real_query, store_result, and
 * next_result for any further result set), so each connection carries a small
 * state machine, `op`, with one waiting Lua coroutine at most.
 *
 * Lifetimes: a Lua userdata points to the C struct.  The struct lives on
 * until (1) no operation is in flight, (2) the MYSQL handle is closed, and
 * (3) every libuv handle went through its close callback.  Whoever ends the
 * last of these calls fh_mysql_conn_maybe_free.  A caller whose deadline
 * passed is answered at once and forgotten (co = NULL); the operation is cut
 * short by shutting the socket down and finishes in the background, touching
 * no Lua.
 */
#ifndef FH_MYSQL_INT_H
#define FH_MYSQL_INT_H
#include "fh.h"
#include <mysql.h>
#include <arpa/inet.h>

#define FH_MYSQL_CONN_MT "flashhost.mysql.conn"

enum {
  FH_MYSQL_IDLE,
  FH_MYSQL_RESOLVE,  /* uv_getaddrinfo for a host name (the connector's own lookup blocks) */
  FH_MYSQL_CONNECT,  /* mysql_real_connect */
  FH_MYSQL_QUERY,    /* mysql_real_query */
  FH_MYSQL_STORE,    /* mysql_store_result of the first result set: the answer */
  FH_MYSQL_NEXT,     /* mysql_next_result: a CALL may send more result sets */
  FH_MYSQL_SKIP,     /* mysql_store_result of a further result set, thrown away */
  FH_MYSQL_CLOSE     /* mysql_close: COM_QUIT, then the handle is freed */
};

typedef struct fh_mysql_conn {
  MYSQL *m;               /* NULL once closed (mysql_close frees it) */
  int op;
  int connected;          /* the handshake succeeded */
  int broken;             /* cannot carry another statement */
  int closed;             /* no new operation; close when idle */
  int has_ud;             /* a Lua userdata points here */
  int handles;            /* libuv handles not yet through their close callback */
  int handles_closing;
  uv_poll_t *poll;        /* on poll_fd; re-made when the socket changes */
  int poll_fd;
  int poll_fallback;      /* no poll handle: retry from wait_timer */
  int fallback_events;
  uv_timer_t wait_timer;  /* MYSQL_WAIT_TIMEOUT, or the fallback retry */
  uv_timer_t deadline;    /* the caller's time limit for this operation */
  uv_getaddrinfo_t resolve;
  unsigned timeout_ms;
  lua_State *co;          /* the waiting coroutine; NULL once answered */
  int *sync_nres;         /* set while the starting Lua call is still on the C stack */
  /* Connect parameters: the connector reads them across suspensions. */
  char *host, *user, *password, *database;
  char addr[INET6_ADDRSTRLEN];
  unsigned port;
  /* The statement in flight and what it produced. */
  char *sql;
  MYSQL *ret_m;
  int ret_int;
  MYSQL_RES *ret_res;
  MYSQL_RES *res;
  unsigned long long affected, insert_id;
  unsigned err_no;
  char sqlstate[6];
  char err[512];
} fh_mysql_conn;

/* core/mysql_conn.c: the connection and its state machine. */
void fh_mysql_conn_maybe_free(fh_mysql_conn *c);
/* Closes once idle (COM_QUIT when healthy); a busy one closes when done. */
void fh_mysql_conn_close(fh_mysql_conn *c);
/* Arms the watchers for the wait mask `st` returned by a _start/_cont. */
void fh_mysql_conn_wait(fh_mysql_conn *c, int st);
/* A phase finished without waiting: start the next one, or finish. */
void fh_mysql_conn_advance(fh_mysql_conn *c);
/* The operation is over: answer the caller (fh_mysql_answer) as the last step. */
void fh_mysql_conn_done(fh_mysql_conn *c);
void fh_mysql_conn_start_deadline(fh_mysql_conn *c, unsigned ms);
void fh_mysql_conn_start_connect(fh_mysql_conn *c);
void fh_mysql_conn_on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *ai);
void fh_mysql_conn_set_error(fh_mysql_conn *c, unsigned no, const char *state, const char *msg);

/* core/mysql.c: pushes the answer of the finished operation on co (a new
 * conn userdata for a connect, rows or counts for a statement, or nil, msg,
 * errno, sqlstate) and returns the count. */
int fh_mysql_answer(lua_State *co, fh_mysql_conn *c, int was_connect);

/* core/mysql_waiter.c: adds driver.waiter and its class to the module table. */
void fh_mysql_waiter_open(lua_State *L);

#endif

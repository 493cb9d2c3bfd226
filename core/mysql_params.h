/*
 * `?` placeholder expansion for the MySQL binding (core/mysql_params.c).
 *
 * Pure functions: no Lua, no connection.  The caller passes the escaping
 * function (mysql_real_escape_string on the connection, in core/mysql.c), so
 * the scanner and the literal formatting can be unit-tested on their own.
 */
#ifndef FH_MYSQL_PARAMS_H
#define FH_MYSQL_PARAMS_H

#include <stddef.h>

typedef enum {
  FH_MYSQL_P_NULL,    /* NULL */
  FH_MYSQL_P_NUMBER,  /* `num`: integers without exponent, others round-trip exactly */
  FH_MYSQL_P_BOOL,    /* `b`: 1 or 0 */
  FH_MYSQL_P_STRING   /* `str`/`len` (may hold NUL bytes): quoted and escaped */
} fh_mysql_ptype;

typedef struct {
  fh_mysql_ptype type;
  double num;
  int b;
  const char *str;
  size_t len;
} fh_mysql_param;

/* Writes the escaped form of from[0..len) to `to` (room for 2*len+1 bytes)
 * without quotes; returns its length, or (size_t)-1 if it cannot. */
typedef size_t (*fh_mysql_escape_fn)(void *ud, char *to, const char *from, size_t len);

/* Counts the `?` of sql that are placeholders: those outside '...', "..." and
 * `...` literals and outside comments (-- , #, slash-star). */
size_t fh_mysql_count_params(const char *sql, size_t len);

/*
 * Replaces the placeholders of sql with the literals of p[0..n).  Returns a
 * malloc'd NUL-terminated statement (its length in *outlen), or NULL with a
 * reason in err: wrong number of parameters, a number SQL cannot spell (NaN,
 * infinity), an escaping failure, or out of memory.
 */
char *fh_mysql_expand(const char *sql, size_t len, const fh_mysql_param *p, size_t n,
                      fh_mysql_escape_fn esc, void *ud, size_t *outlen,
                      char *err, size_t errlen);

/* Formats a finite number as an SQL literal into buf (>= 32 bytes): integral
 * values below 2^63 without exponent, others with the shortest exact form.
 * Returns the length, or 0 for NaN and infinities. */
size_t fh_mysql_format_number(double v, char *buf, size_t size);

#endif

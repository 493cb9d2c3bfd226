/*
 * `?` placeholders for the MySQL binding: find them, and splice in literals.
 *
 * The server never sees a parameter as code: strings go through the
 * connection's escaping function and are quoted, numbers are printed by us,
 * everything else is refused by the caller before it gets here.  The scanner
 * only has to agree with the server on where literals and comments begin and
 * end, so that a `?` inside 'it?' or a comment is left alone.
 */
#include "mysql_params.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Index just past the literal that opens at sql[i] with `quote`.  Backslash
 * escapes apply in '...' and "..." (the server's default sql_mode); a doubled
 * quote needs no rule: it closes and reopens the literal. */
static size_t fh_mysql_params__skip_quoted(const char *sql, size_t len, size_t i, char quote) {
  for (i++; i < len; i++) {
    if (sql[i] == '\\' && quote != '`') { i++; continue; }
    if (sql[i] == quote) return i + 1;
  }
  return len;
}

static size_t fh_mysql_params__skip_line(const char *sql, size_t len, size_t i) {
  while (i < len && sql[i] != '\n') i++;
  return i;
}

static int fh_mysql_params__is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* Position of the next placeholder at or after `i`, or len. */
static size_t fh_mysql_params__next(const char *sql, size_t len, size_t i) {
  while (i < len) {
    char c = sql[i];
    if (c == '?') return i;
    if (c == '\'' || c == '"' || c == '`') {
      i = fh_mysql_params__skip_quoted(sql, len, i, c);
    } else if (c == '#') {
      i = fh_mysql_params__skip_line(sql, len, i);
    } else if (c == '-' && i + 1 < len && sql[i + 1] == '-' &&
               (i + 2 == len || fh_mysql_params__is_space(sql[i + 2]))) {
      i = fh_mysql_params__skip_line(sql, len, i);
    } else if (c == '/' && i + 1 < len && sql[i + 1] == '*' &&
               !(i + 2 < len && sql[i + 2] == '!') &&
               !(i + 3 < len && sql[i + 2] == 'M' && sql[i + 3] == '!')) {
      /* An executable comment (slash-star-bang, MariaDB's slash-star-M-bang)
       * is code to the server, so only plain comments are skipped. */
      const char *end = NULL;
      for (size_t j = i + 2; j + 1 < len; j++) {
        if (sql[j] == '*' && sql[j + 1] == '/') { end = sql + j; break; }
      }
      i = end ? (size_t)(end - sql) + 2 : len;
    } else {
      i++;
    }
  }
  return len;
}

size_t fh_mysql_count_params(const char *sql, size_t len) {
  size_t n = 0;
  for (size_t i = fh_mysql_params__next(sql, len, 0); i < len; i = fh_mysql_params__next(sql, len, i + 1)) n++;
  return n;
}

size_t fh_mysql_format_number(double v, char *buf, size_t size) {
  if (!isfinite(v) || size < 32) return 0;
  int n;
  /* Below 2^63 an integral double prints exactly as an integer; an id or a
   * quantity must never reach the server as 1e+15. */
  if (v == floor(v) && fabs(v) < 9223372036854775808.0) {
    n = snprintf(buf, size, "%.0f", v);
  } else {
    /* The shortest form that reads back as the same double. */
    n = snprintf(buf, size, "%.15g", v);
    if (strtod(buf, NULL) != v) n = snprintf(buf, size, "%.17g", v);
  }
  return n > 0 && (size_t)n < size ? (size_t)n : 0;
}

typedef struct { char *p; size_t len, cap; } fh_mysql_params__buf;

static int fh_mysql_params__reserve(fh_mysql_params__buf *b, size_t more) {
  if (b->len + more + 1 <= b->cap) return 0;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->len + more + 1) {
    if (cap > ((size_t)-1) / 2) return -1;
    cap *= 2;
  }
  char *np = realloc(b->p, cap);
  if (!np) return -1;
  b->p = np;
  b->cap = cap;
  return 0;
}

static int fh_mysql_params__append(fh_mysql_params__buf *b, const char *s, size_t n) {
  if (fh_mysql_params__reserve(b, n) != 0) return -1;
  memcpy(b->p + b->len, s, n);
  b->len += n;
  return 0;
}

char *fh_mysql_expand(const char *sql, size_t len, const fh_mysql_param *p, size_t n,
                      fh_mysql_escape_fn esc, void *ud, size_t *outlen,
                      char *err, size_t errlen) {
  size_t want = fh_mysql_count_params(sql, len);
  if (want != n) {
    snprintf(err, errlen, "the statement has %zu placeholder%s but %zu parameter%s given",
             want, want == 1 ? "" : "s", n, n == 1 ? " was" : "s were");
    return NULL;
  }
  fh_mysql_params__buf b = {0};
  size_t from = 0, k = 0;
  if (fh_mysql_params__reserve(&b, len) != 0) goto oom;
  for (size_t at = fh_mysql_params__next(sql, len, 0); at < len; at = fh_mysql_params__next(sql, len, at + 1), k++) {
    if (fh_mysql_params__append(&b, sql + from, at - from) != 0) goto oom;
    from = at + 1;
    const fh_mysql_param *v = &p[k];
    char num[64];
    size_t nl;
    switch (v->type) {
      case FH_MYSQL_P_NULL:
        if (fh_mysql_params__append(&b, "NULL", 4) != 0) goto oom;
        break;
      case FH_MYSQL_P_BOOL:
        if (fh_mysql_params__append(&b, v->b ? "1" : "0", 1) != 0) goto oom;
        break;
      case FH_MYSQL_P_NUMBER:
        nl = fh_mysql_format_number(v->num, num, sizeof num);
        if (nl == 0) {
          snprintf(err, errlen, "parameter %zu: %g has no SQL literal", k + 1, v->num);
          free(b.p);
          return NULL;
        }
        if (fh_mysql_params__append(&b, num, nl) != 0) goto oom;
        break;
      case FH_MYSQL_P_STRING:
        if (v->len > ((size_t)-1 - 4) / 2 || fh_mysql_params__reserve(&b, v->len * 2 + 3) != 0) goto oom;
        b.p[b.len++] = '\'';
        nl = esc(ud, b.p + b.len, v->str, v->len);
        if (nl == (size_t)-1) {
          snprintf(err, errlen, "parameter %zu: the string cannot be escaped", k + 1);
          free(b.p);
          return NULL;
        }
        b.len += nl;
        b.p[b.len++] = '\'';
        break;
    }
  }
  if (fh_mysql_params__append(&b, sql + from, len - from) != 0) goto oom;
  b.p[b.len] = 0;
  *outlen = b.len;
  return b.p;
oom:
  free(b.p);
  snprintf(err, errlen, "out of memory");
  return NULL;
}

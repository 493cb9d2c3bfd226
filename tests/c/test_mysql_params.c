/*
 * test_mysql_params: `?` placeholder scanning and literal formatting of the
 * MySQL binding (core/mysql_params.c), without a server.
 *
 * The escaping function here mimics mysql_real_escape_string for an ASCII-
 * compatible character set, so the expected statements are what the server
 * would receive.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mysql_params.h"

static int passed, failed;

#define CHECK(cond, ...)                                   \
  do {                                                     \
    if (cond) {                                            \
      passed++;                                            \
    } else {                                               \
      failed++;                                            \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
      fprintf(stderr, __VA_ARGS__);                        \
      fputc('\n', stderr);                                 \
    }                                                      \
  } while (0)

static size_t escape(void *ud, char *to, const char *from, size_t len) {
  (void)ud;
  size_t n = 0;
  for (size_t i = 0; i < len; i++) {
    char e = 0;
    switch (from[i]) {
      case 0: e = '0'; break;
      case '\n': e = 'n'; break;
      case '\r': e = 'r'; break;
      case '\\': e = '\\'; break;
      case '\'': e = '\''; break;
      case '"': e = '"'; break;
      case '\032': e = 'Z'; break;
    }
    if (e) { to[n++] = '\\'; to[n++] = e; }
    else to[n++] = from[i];
  }
  to[n] = 0;
  return n;
}

static size_t failing_escape(void *ud, char *to, const char *from, size_t len) {
  (void)ud; (void)to; (void)from; (void)len;
  return (size_t)-1;
}

static void count(const char *sql, size_t want) {
  size_t got = fh_mysql_count_params(sql, strlen(sql));
  CHECK(got == want, "count(%s) = %zu, want %zu", sql, got, want);
}

static void expand(const char *sql, const fh_mysql_param *p, size_t n, const char *want,
                   size_t want_len) {
  char err[200] = "";
  size_t len = 0;
  char *out = fh_mysql_expand(sql, strlen(sql), p, n, escape, NULL, &len, err, sizeof err);
  CHECK(out != NULL, "expand(%s) failed: %s", sql, err);
  if (!out) return;
  CHECK(len == want_len && memcmp(out, want, len) == 0 && out[len] == 0,
        "expand(%s) = [%.*s], want [%.*s]", sql, (int)len, out, (int)want_len, want);
  free(out);
}

static void expand_fails(const char *sql, const fh_mysql_param *p, size_t n, const char *reason) {
  char err[200] = "";
  size_t len = 0;
  char *out = fh_mysql_expand(sql, strlen(sql), p, n, escape, NULL, &len, err, sizeof err);
  CHECK(out == NULL, "expand(%s) should fail", sql);
  free(out);
  CHECK(strstr(err, reason) != NULL, "expand(%s): reason [%s] lacks [%s]", sql, err, reason);
}

static void number(double v, const char *want) {
  char buf[64];
  size_t n = fh_mysql_format_number(v, buf, sizeof buf);
  CHECK(n > 0 && strcmp(buf, want) == 0, "number(%.17g) = [%s], want [%s]", v,
        n ? buf : "(none)", want);
}

static fh_mysql_param str(const char *s, size_t len) {
  fh_mysql_param p = {.type = FH_MYSQL_P_STRING, .str = s, .len = len};
  return p;
}

static fh_mysql_param num(double v) {
  fh_mysql_param p = {.type = FH_MYSQL_P_NUMBER, .num = v};
  return p;
}

static void test_count(void) {
  count("SELECT 1", 0);
  count("SELECT ?", 1);
  count("INSERT INTO t VALUES (?, ?, ?)", 3);
  count("SELECT 'a?b', ?", 1);
  count("SELECT \"a?b\", ?", 1);
  count("SELECT `we?ird` FROM t WHERE x = ?", 1);
  count("SELECT 'it''s?', ?", 1);
  count("SELECT 'back\\'slash?', ?", 1);
  count("SELECT \"dq \\\" ?\", ?", 1);
  count("SELECT ? -- a comment?\n, ?", 2);
  count("SELECT ? --not-a-comment ?", 2);
  count("SELECT 1 --", 0);
  count("SELECT ? # comment ?\n", 1);
  count("SELECT /* ? */ ?", 1);
  count("SELECT /* unterminated ?", 0);
  count("SELECT /*!50000 ? */", 1);
  count("SELECT /*M!100000 ? */", 1);
  count("SELECT 'unterminated ?", 0);
  count("SELECT ??", 2);
  count("", 0);
}

static void test_expand(void) {
  fh_mysql_param p[4];
  p[0] = str("O'Brien", 7);
  expand("SELECT ?", p, 1, "SELECT 'O\\'Brien'", 17);

  static const char nul[] = {'a', 0, 'b'};
  p[0] = str(nul, 3);
  expand("SELECT ?", p, 1, "SELECT 'a\\0b'", 13);

  p[0] = str("x", 1);
  p[1] = num(42);
  p[2] = (fh_mysql_param){.type = FH_MYSQL_P_NULL};
  p[3] = (fh_mysql_param){.type = FH_MYSQL_P_BOOL, .b = 1};
  expand("INSERT INTO t VALUES (?, ?, ?, ?)", p, 4,
         "INSERT INTO t VALUES ('x', 42, NULL, 1)", 39);

  p[0] = (fh_mysql_param){.type = FH_MYSQL_P_BOOL, .b = 0};
  expand("SELECT 'a?' , ? -- ?", p, 1, "SELECT 'a?' , 0 -- ?", 20);

  p[0] = str("1' OR '1'='1", 12);
  expand("SELECT * FROM u WHERE name = ?", p, 1,
         "SELECT * FROM u WHERE name = '1\\' OR \\'1\\'=\\'1'", 47);

  p[0] = str("", 0);
  expand("?", p, 1, "''", 2);
  expand("SELECT 1", NULL, 0, "SELECT 1", 8);

  /* A long string grows the buffer past its first size. */
  size_t big = 100000;
  char *s = malloc(big);
  memset(s, '\'', big);
  p[0] = str(s, big);
  char err[200];
  size_t len = 0;
  char *out = fh_mysql_expand("?", 1, p, 1, escape, NULL, &len, err, sizeof err);
  CHECK(out && len == big * 2 + 2 && out[0] == '\'' && out[len - 1] == '\'' &&
            out[1] == '\\' && out[2] == '\'',
        "long string: len %zu", len);
  free(out);
  free(s);
}

static void test_errors(void) {
  fh_mysql_param p[2] = {num(1), num(2)};
  expand_fails("SELECT ?", p, 2, "1 placeholder but 2 parameters");
  expand_fails("SELECT ?, ?", p, 1, "2 placeholders but 1 parameter was");
  expand_fails("SELECT 1", p, 1, "0 placeholders");
  p[0] = num(NAN);
  expand_fails("SELECT ?", p, 1, "no SQL literal");
  p[0] = num(INFINITY);
  expand_fails("SELECT ?", p, 1, "no SQL literal");
  p[0] = str("x", 1);
  char err[200] = "";
  size_t len;
  char *out = fh_mysql_expand("SELECT ?", 8, p, 1, failing_escape, NULL, &len, err, sizeof err);
  CHECK(out == NULL && strstr(err, "cannot be escaped"), "escape failure: %s", err);
  free(out);
}

static void test_numbers(void) {
  number(0, "0");
  number(42, "42");
  number(-7, "-7");
  number(1e15, "1000000000000000");
  number(9007199254740993.0, "9007199254740992");
  number(1234567890123456789.0, "1234567890123456768");
  number(0.5, "0.5");
  number(0.1, "0.1");
  number(1.0 / 3, "0.33333333333333331");
  number(-2.25, "-2.25");
  number(1e300, "1e+300");
  number(1e-7, "1e-07");
  char buf[64];
  CHECK(fh_mysql_format_number(NAN, buf, sizeof buf) == 0, "NaN has no literal");
  CHECK(fh_mysql_format_number(-INFINITY, buf, sizeof buf) == 0, "-inf has no literal");
  /* Every non-integral form must read back as the same double. */
  double vals[] = {0.1, 0.2, 0.3, 1.0 / 3, 2.0 / 3, 1e-7, 123.456, 3.14159265358979};
  for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
    fh_mysql_format_number(vals[i], buf, sizeof buf);
    CHECK(strtod(buf, NULL) == vals[i], "%s does not read back as %.17g", buf, vals[i]);
  }
}

int main(void) {
  test_count();
  test_expand();
  test_errors();
  test_numbers();
  printf("test_mysql_params: %d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}

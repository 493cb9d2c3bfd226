/* Structured logging: one JSON object per line on stderr, filtered by LOG_LEVEL. */
#include "fh.h"
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <stdlib.h>
#include <unistd.h>

static int fh_log__min_level = FH_LOG_INFO;
static const char *fh_log__names[] = {"debug", "info", "warn", "error"};

void fh_log_init(void) {
  const char *lv = getenv("LOG_LEVEL");
  if (!lv) return;
  for (int i = 0; i < 4; i++)
    if (strcasecmp(lv, fh_log__names[i]) == 0) fh_log__min_level = i;
}

int fh_log_enabled(int level) { return level >= fh_log__min_level; }
const char *fh_log_level_name(int level) { return fh_log__names[level < 0 || level > 3 ? 1 : level]; }

/* Appends `s` JSON-escaped; truncates silently at the buffer end. */
static size_t fh_log__json_escape(char *dst, size_t cap, const char *s) {
  size_t n = 0;
  for (; *s && n + 7 < cap; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') { dst[n++] = '\\'; dst[n++] = (char)c; }
    else if (c == '\n') { dst[n++] = '\\'; dst[n++] = 'n'; }
    else if (c < 0x20) n += (size_t)snprintf(dst + n, cap - n, "\\u%04x", c);
    else dst[n++] = (char)c;
  }
  return n;
}

void fh_log(int level, const char *fmt, ...) {
  if (!fh_log_enabled(level)) return;
  char msg[2048], line[4600];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  int n = snprintf(line, sizeof line, "{\"ts\":%lld,\"level\":\"%s\",\"pid\":%d,\"worker\":%d,\"msg\":\"",
                   (long long)fh_now_ms(), fh_log__names[level], (int)getpid(), fh_worker_id());
  n += (int)fh_log__json_escape(line + n, sizeof line - (size_t)n - 4, msg);
  line[n++] = '"'; line[n++] = '}'; line[n++] = '\n';
  /* One write() per line keeps lines from several workers unmixed. */
  ssize_t w = write(2, line, (size_t)n);
  (void)w;
}

void fh_log_raw(const char *json, size_t len) {
  char stackbuf[4096];
  char *buf = len + 1 <= sizeof stackbuf ? stackbuf : malloc(len + 1);
  if (!buf) return;
  memcpy(buf, json, len);
  buf[len] = '\n';
  ssize_t w = write(2, buf, len + 1);
  (void)w;
  if (buf != stackbuf) free(buf);
}

/*
 * HTTP server edge cases, in-process: the worker runs its loop on the main
 * thread while a client thread talks to it over real sockets, then sends
 * SIGTERM so the worker drains and returns (ASan then checks for leaks).
 */
#include "worker.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static int port;
static int failures;

#define CHECK(cond, ...)                                      \
  do {                                                        \
    if (!(cond)) {                                            \
      failures++;                                             \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);    \
      fprintf(stderr, __VA_ARGS__);                           \
      fprintf(stderr, "\n");                                  \
    }                                                         \
  } while (0)

static int dial(void) {
  for (int attempt = 0; attempt < 200; attempt++) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) return fd;
    close(fd);
    usleep(10000); /* the server thread may still be binding */
  }
  return -1;
}

/* Reads until the peer closes or `expect_responses` complete responses
 * (counted by "HTTP/1.1 " status lines with their bodies) have arrived. */
static size_t read_all(int fd, char *buf, size_t cap, int expect_responses) {
  size_t n = 0;
  for (;;) {
    ssize_t r = recv(fd, buf + n, cap - 1 - n, 0);
    if (r <= 0) break;
    n += (size_t)r;
    buf[n] = 0;
    if (expect_responses > 0) {
      int complete = 0;
      for (char *p = buf; (p = strstr(p, "HTTP/1.1 ")); p++) {
        char *hdr_end = strstr(p, "\r\n\r\n");
        char *cl = strstr(p, "Content-Length: ");
        if (!hdr_end || !cl || cl > hdr_end) break;
        size_t len = (size_t)atoi(cl + 16);
        if ((size_t)(buf + n - (hdr_end + 4)) >= len) complete++;
      }
      if (complete >= expect_responses) break;
    }
  }
  buf[n] = 0;
  return n;
}

static int count(const char *hay, const char *needle) {
  int c = 0;
  for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle)) c++;
  return c;
}

static void send_str(int fd, const char *s) { (void)!send(fd, s, strlen(s), MSG_NOSIGNAL); }

static void *client(void *arg) {
  static char buf[1 << 16];
  int fd;

  /* keep-alive: two requests on one connection, in order */
  fd = dial();
  send_str(fd, "GET /hello/a HTTP/1.1\r\nHost: t\r\n\r\n");
  read_all(fd, buf, sizeof buf, 1);
  CHECK(strstr(buf, "{\"hello\":\"a\"}"), "first keep-alive answer: %s", buf);
  send_str(fd, "GET /hello/b HTTP/1.1\r\nHost: t\r\n\r\n");
  read_all(fd, buf, sizeof buf, 1);
  CHECK(strstr(buf, "{\"hello\":\"b\"}"), "second keep-alive answer: %s", buf);
  close(fd);

  /* pipelining: three requests in one write come back in order, the slow one first */
  fd = dial();
  send_str(fd, "GET /sleep HTTP/1.1\r\n\r\nGET /hello/2 HTTP/1.1\r\n\r\n"
               "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n");
  read_all(fd, buf, sizeof buf, 3);
  char *slow = strstr(buf, "slept"), *second = strstr(buf, "\"2\""), *third = strstr(buf, "{\"a\":1}");
  CHECK(slow && second && third && slow < second && second < third, "pipelined order: %s", buf);
  close(fd);

  /* a request split into single bytes */
  fd = dial();
  const char *req = "GET /hello/split HTTP/1.1\r\nHost: t\r\n\r\n";
  for (const char *p = req; *p; p++) { (void)!send(fd, p, 1, MSG_NOSIGNAL); usleep(200); }
  read_all(fd, buf, sizeof buf, 1);
  CHECK(strstr(buf, "split"), "byte-by-byte request: %s", buf);
  close(fd);

  /* malformed request line -> 400 and close */
  fd = dial();
  send_str(fd, "NOT HTTP AT ALL\r\n\r\n");
  read_all(fd, buf, sizeof buf, 0);
  CHECK(strncmp(buf, "HTTP/1.1 400", 12) == 0, "garbage: %s", buf);
  close(fd);

  /* header block past the limit -> 431 */
  fd = dial();
  char big[12000];
  memset(big, 'a', sizeof big);
  big[sizeof big - 1] = 0;
  send_str(fd, "GET / HTTP/1.1\r\nX-Big: ");
  send_str(fd, big);
  send_str(fd, "\r\n\r\n");
  read_all(fd, buf, sizeof buf, 0);
  CHECK(strncmp(buf, "HTTP/1.1 431", 12) == 0, "big header: %.80s", buf);
  close(fd);

  /* too many headers -> 431 */
  fd = dial();
  send_str(fd, "GET / HTTP/1.1\r\n");
  for (int i = 0; i < 120; i++) send_str(fd, "X: y\r\n");
  send_str(fd, "\r\n");
  read_all(fd, buf, sizeof buf, 0);
  CHECK(strncmp(buf, "HTTP/1.1 431", 12) == 0, "many headers: %.80s", buf);
  close(fd);

  /* announced body past the limit -> 413 before it is sent */
  fd = dial();
  send_str(fd, "POST /echo HTTP/1.1\r\nContent-Length: 1048576\r\n\r\n");
  read_all(fd, buf, sizeof buf, 0);
  CHECK(strncmp(buf, "HTTP/1.1 413", 12) == 0, "big content-length: %.80s", buf);
  close(fd);

  /* chunked body growing past the limit -> 413 */
  fd = dial();
  send_str(fd, "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
  char chunk[4200];
  memset(chunk, 'b', 4096);
  memcpy(chunk + 4096, "\r\n", 3);
  for (int i = 0; i < 5; i++) { send_str(fd, "1000\r\n"); send_str(fd, chunk); }
  read_all(fd, buf, sizeof buf, 0);
  CHECK(strncmp(buf, "HTTP/1.1 413", 12) == 0, "big chunked body: %.80s", buf);
  close(fd);

  /* a request that never finishes -> 408 after the read timeout */
  fd = dial();
  send_str(fd, "GET /hello/slow HTTP/1.1\r\nHost: t\r\n");
  read_all(fd, buf, sizeof buf, 0);
  CHECK(strncmp(buf, "HTTP/1.1 408", 12) == 0, "slow client: %.80s", buf);
  close(fd);

  /* an idle keep-alive connection is closed by the server */
  fd = dial();
  size_t n = read_all(fd, buf, sizeof buf, 0);
  CHECK(n == 0, "idle connection should close without data, got %zu bytes", n);
  close(fd);

  /* a handler that raises answers 500 and the worker keeps serving */
  fd = dial();
  send_str(fd, "GET /boom HTTP/1.1\r\n\r\nGET /hello/after HTTP/1.1\r\n\r\n");
  read_all(fd, buf, sizeof buf, 2);
  CHECK(strncmp(buf, "HTTP/1.1 500", 12) == 0 && strstr(buf, "after"), "500 then ok: %s", buf);
  close(fd);

  /* HTTP/1.0 without keep-alive: answered with Connection: close */
  fd = dial();
  send_str(fd, "GET /hello/old HTTP/1.0\r\n\r\n");
  read_all(fd, buf, sizeof buf, 0);
  CHECK(strstr(buf, "Connection: close") && strstr(buf, "old"), "http/1.0: %s", buf);
  close(fd);

  /* unknown route and wrong method */
  fd = dial();
  send_str(fd, "GET /nope HTTP/1.1\r\n\r\nDELETE /hello/x HTTP/1.1\r\n\r\n");
  read_all(fd, buf, sizeof buf, 2);
  CHECK(count(buf, "HTTP/1.1 404") == 1 && count(buf, "HTTP/1.1 405") == 1, "404/405: %s", buf);
  close(fd);

  kill(getpid(), SIGTERM);
  return NULL;
}

int main(void) {
  char app[] = "/tmp/fh-test-http-XXXXXX.lua";
  int afd = mkstemps(app, 4);
  const char *src =
      "local app = require('flashhost.app').new('edges')\n"
      "local timer = require('flashhost.timer')\n"
      "app:get('/hello/:name', function(req) return 200, { hello = req.params.name } end)\n"
      "app:get('/sleep', function() timer.sleep(100) return 200, { slept = true } end)\n"
      "app:get('/boom', function() error('deliberate') end)\n"
      "app:post('/echo', function(req) local b = req:json() return 200, b end)\n"
      "return app\n";
  (void)!write(afd, src, strlen(src));
  close(afd);

  port = 20000 + getpid() % 20000;
  char ps[16];
  snprintf(ps, sizeof ps, "%d", port);
  setenv("PORT", ps, 1);
  setenv("ADMIN_PORT", "0", 1);
  setenv("HOST", "127.0.0.1", 1);
  setenv("HTTP_READ_TIMEOUT_MS", "300", 1);
  setenv("HTTP_IDLE_TIMEOUT_MS", "500", 1);
  setenv("LOG_LEVEL", "error", 1);
  fh_log_init();

  /* SIGTERM must reach the loop's signal handler, not kill the client thread */
  pthread_t t;
  pthread_create(&t, NULL, client, NULL);
  int rc = fh_worker_run(app, 0, 0);
  pthread_join(t, NULL);
  unlink(app);
  CHECK(rc == 0, "worker exit code %d", rc);
  if (failures) { fprintf(stderr, "%d check(s) failed\n", failures); return 1; }
  printf("http edge cases: all passed\n");
  return 0;
}

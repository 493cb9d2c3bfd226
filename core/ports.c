/*
 * Which ports a flashhost serves, and the claim that makes them its own.
 *
 * Workers bind with SO_REUSEPORT so the kernel spreads connections over
 * them; the same option would let a second flashhost (same user, same PORT)
 * join the group, and the kernel would then split connections between two
 * different apps.  So the master claims each port before it starts a worker:
 * an exclusive flock on a lock file per port, held for the master's life and
 * released by the kernel however the master ends (a SIGKILLed master does not
 * block the next start), plus a trial bind without SO_REUSEPORT, which fails
 * while anything else (flashhost or not) listens on the port.  Restarted
 * workers and reloads do not claim again: the master still holds the lock.
 */
#include "worker.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>

void fh_ports_get(fh_ports *p) {
  const char *v;
  p->host = (v = getenv("HOST")) ? v : "0.0.0.0";
  p->admin_host = (v = getenv("ADMIN_HOST")) ? v : "127.0.0.1";
  p->port = (v = getenv("PORT")) && *v ? atoi(v) : 3000;
  p->admin_port = (v = getenv("ADMIN_PORT")) && *v ? atoi(v) : 9145;
}

static char fh_ports__held[2][300]; /* lock files to remove at a clean exit */
static int fh_ports__nheld;

/* Whether fd is still the file at path: a holder that exits removes its lock
 * file, and a lock taken on the removed file would guard nothing. */
static int fh_ports__same_file(int fd, const char *path) {
  struct stat a, b;
  return fstat(fd, &a) == 0 && stat(path, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

/* Takes the lock of `port`; the descriptor stays open (and locked) until the
 * process ends.  CLOEXEC keeps it out of the workers: a worker left draining
 * after its master died must not keep the next master out. */
static int fh_ports__lock(const char *var, int port) {
  const char *dir = getenv("FH_LOCK_DIR");
  char path[300];
  snprintf(path, sizeof path, "%s/flashhost-port-%d.lock", dir && *dir ? dir : "/tmp", port);
  int fd = -1, locked = 0;
  for (int attempt = 0; attempt < 5; attempt++) {
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0) {
      fh_log(FH_LOG_ERROR, "cannot claim %s %d: %s: %s", var, port, path, strerror(errno));
      return -1;
    }
    locked = flock(fd, LOCK_EX | LOCK_NB) == 0;
    if (!locked || fh_ports__same_file(fd, path)) break;
    close(fd); /* its holder removed it on the way out: take the new one */
    fd = -1;
  }
  if (fd < 0) {
    fh_log(FH_LOG_ERROR, "cannot claim %s %d: %s keeps being replaced", var, port, path);
    return -1;
  }
  if (!locked) {
    char holder[32] = "";
    ssize_t n = pread(fd, holder, sizeof holder - 1, 0);
    holder[n > 0 ? n : 0] = 0;
    holder[strcspn(holder, "\n")] = 0;
    fh_log(FH_LOG_ERROR, "%s %d is in use by another process (flashhost pid %s holds %s)", var, port,
           *holder ? holder : "?", path);
    close(fd);
    return -1;
  }
  char pid[32];
  int len = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
  if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)len, 0) != len) {} /* only informative */
  snprintf(fh_ports__held[fh_ports__nheld++], sizeof fh_ports__held[0], "%s", path);
  return 0;
}

void fh_ports_release(void) {
  /* removed while still locked (the lock goes with the process), so a
   * master that opened the old file sees it replaced and retries */
  for (int i = 0; i < fh_ports__nheld; i++) unlink(fh_ports__held[i]);
  fh_ports__nheld = 0;
}

/* A bind without SO_REUSEPORT fails while any socket listens on the port. */
static int fh_ports__probe(const char *var, const char *host, int port) {
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
    fh_log(FH_LOG_ERROR, "cannot listen on %s:%d: not an IPv4 address", host, port);
    return -1;
  }
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0; /* let the workers' bind report it */
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one); /* TIME_WAIT is no owner */
  int rc = bind(fd, (struct sockaddr *)&addr, sizeof addr) == 0 ? 0 : errno;
  close(fd);
  if (rc == EADDRINUSE) {
    fh_log(FH_LOG_ERROR, "%s %d is in use by another process (%s:%d is bound)", var, port, host, port);
    return -1;
  }
  if (rc) {
    fh_log(FH_LOG_ERROR, "cannot listen on %s:%d: %s", host, port, strerror(rc));
    return -1;
  }
  return 0;
}

int fh_ports_claim(void) {
  fh_ports p;
  fh_ports_get(&p);
  int admin = p.admin_port > 0 && p.admin_port != p.port;
  if ((p.port > 0 && (fh_ports__lock("PORT", p.port) != 0 || fh_ports__probe("PORT", p.host, p.port) != 0)) ||
      (admin && (fh_ports__lock("ADMIN_PORT", p.admin_port) != 0 ||
                 fh_ports__probe("ADMIN_PORT", p.admin_host, p.admin_port) != 0))) {
    fh_ports_release();
    return -1;
  }
  return 0;
}

/* Opt-in file watch (--watch): a change to a .lua file in the app's folder,
 * one level of subfolders (app/lib) or ../redis-lua triggers a reload, after
 * a short quiet period so an editor's burst of writes gives one reload. */
#include "worker.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <dirent.h>
#include <sys/stat.h>

#define FH_WATCH_MAX 32
#define FH_WATCH_QUIET_MS 300

static uv_fs_event_t fh_watch__ev[FH_WATCH_MAX];
static int fh_watch__nev;
static uv_timer_t fh_watch__debounce;
static void (*fh_watch__cb)(void);

static void fh_watch__fire(uv_timer_t *t) { fh_watch__cb(); }

static void fh_watch__on_event(uv_fs_event_t *h, const char *file, int events, int status) {
  size_t n = file ? strlen(file) : 0;
  if (status < 0 || n < 4 || strcmp(file + n - 4, ".lua") != 0) return;
  uv_timer_start(&fh_watch__debounce, fh_watch__fire, FH_WATCH_QUIET_MS, 0);
}

static void fh_watch__watch_dir(uv_loop_t *loop, const char *dir) {
  if (fh_watch__nev == FH_WATCH_MAX) return;
  uv_fs_event_init(loop, &fh_watch__ev[fh_watch__nev]);
  if (uv_fs_event_start(&fh_watch__ev[fh_watch__nev], fh_watch__on_event, dir, 0) == 0) fh_watch__nev++;
  else uv_close((uv_handle_t *)&fh_watch__ev[fh_watch__nev], NULL);
}

int fh_watch_start(uv_loop_t *loop, const char *app, void (*on_change)(void)) {
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%s", app);
  char *slash = strrchr(dir, '/');
  if (slash) *slash = 0; else strcpy(dir, ".");
  fh_watch__cb = on_change;
  uv_timer_init(loop, &fh_watch__debounce);
  fh_watch__watch_dir(loop, dir);
  DIR *d = opendir(dir);
  if (d) {
    struct dirent *e;
    while ((e = readdir(d))) {
      if (e->d_name[0] == '.') continue;
      char sub[PATH_MAX + 256];
      struct stat st;
      snprintf(sub, sizeof sub, "%s/%s", dir, e->d_name);
      if (stat(sub, &st) == 0 && S_ISDIR(st.st_mode)) fh_watch__watch_dir(loop, sub);
    }
    closedir(d);
  }
  char scripts[PATH_MAX + 16];
  snprintf(scripts, sizeof scripts, "%s/../redis-lua", dir);
  fh_watch__watch_dir(loop, scripts);
  return fh_watch__nev > 0 ? 0 : -1;
}

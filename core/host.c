/* flashhost.core: what every app may ask of its host process — clocks, ids,
 * log output, task spawning, and the boot/stop handshake with the runtime. */
#include "gen.h"
#include "host.h"
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <inttypes.h>
#include <string.h>
#include <errno.h>
#include <sys/stat.h>

static fh_core_exit_hook fh_core__exit_hook;

void fh_core_set_exit_hook(fh_core_exit_hook hook) { fh_core__exit_hook = hook; }

static int l_core_now(lua_State *L) { lua_pushnumber(L, (lua_Number)fh_now_ms()); return 1; }
static int l_core_mono(lua_State *L) { lua_pushnumber(L, (lua_Number)fh_mono_ns() / 1e6); return 1; }

/* ids are strings: a 64-bit id does not fit a Lua number (a double). */
static int l_core_id(lua_State *L) {
  char buf[24];
  snprintf(buf, sizeof buf, "%" PRIu64, fh_id_next());
  lua_pushstring(L, buf);
  return 1;
}

/* The first of a block of FH_ID_BLOCK fresh consecutive ids (a multiple of
 * FH_ID_BLOCK), and the block's size. */
static int l_core_id_block(lua_State *L) {
  char buf[24];
  snprintf(buf, sizeof buf, "%" PRIu64, fh_id_block());
  lua_pushstring(L, buf);
  lua_pushinteger(L, FH_ID_BLOCK);
  return 2;
}

static int l_core_log_enabled(lua_State *L) {
  lua_pushboolean(L, fh_log_enabled((int)luaL_checkinteger(L, 1)));
  return 1;
}

static int l_core_log_write(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  fh_log_raw(s, len);
  return 0;
}

static int l_core_spawn(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  int nargs = lua_gettop(L) - 1;
  if (fh_task_spawn_now(fh_gen_of(L), L, nargs) != 0) return fh_push_error(L, "stopping");
  lua_pushboolean(L, 1);
  return 1;
}

static int l_core_stopping(lua_State *L) {
  lua_pushboolean(L, fh_gen_stopping(fh_gen_of(L)));
  return 1;
}

static int l_core_boot_done(lua_State *L) {
  int ok = lua_toboolean(L, 1);
  fh_gen_booted(fh_gen_of(L), ok, luaL_optstring(L, 2, NULL));
  return 0;
}

/* run_done(code, err): the end of `flashhost --run SCRIPT`. */
static int l_core_run_done(lua_State *L) {
  int code = (int)luaL_checkinteger(L, 1);
  const char *err = luaL_optstring(L, 2, NULL);
  if (code != 0 && err && strncmp(err, "exit ", 5) != 0) fprintf(stderr, "%s\n", err);
  if (fh_core__exit_hook) fh_core__exit_hook(code);
  fh_gen_booted(fh_gen_of(L), code == 0, err);
  return 0;
}

static int l_core_mkdir(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  if (mkdir(path, 0700) != 0 && errno != EEXIST) return fh_push_error(L, "mkdir %s: %s", path, strerror(errno));
  lua_pushboolean(L, 1);
  return 1;
}

static int l_core_info(lua_State *L) {
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, fh_worker_id()); lua_setfield(L, -2, "worker_id");
  lua_pushinteger(L, fh_node_id()); lua_setfield(L, -2, "node_id");
  lua_pushinteger(L, getpid()); lua_setfield(L, -2, "pid");
  lua_pushinteger(L, fh_master_pid()); lua_setfield(L, -2, "master_pid");
  lua_pushinteger(L, fh_gen_id(fh_gen_of(L))); lua_setfield(L, -2, "generation");
  lua_pushstring(L, FH_VERSION); lua_setfield(L, -2, "version");
  char host[256];
  if (gethostname(host, sizeof host) == 0) {
    host[sizeof host - 1] = 0;
    lua_pushstring(L, host);
    lua_setfield(L, -2, "hostname");
  }
  return 1;
}

int luaopen_flashhost_core(lua_State *L) {
  static const luaL_Reg fns[] = {
    {"now", l_core_now}, {"mono", l_core_mono}, {"id", l_core_id}, {"id_block", l_core_id_block},
    {"log_enabled", l_core_log_enabled}, {"log_write", l_core_log_write},
    {"spawn", l_core_spawn}, {"stopping", l_core_stopping},
    {"boot_done", l_core_boot_done}, {"mkdir", l_core_mkdir}, {"run_done", l_core_run_done},
    {"info", l_core_info}, {NULL, NULL}};
  lua_newtable(L);
  luaL_register(L, NULL, fns);
  /* core.event(): the Lua side of timer.park/unpark (core/lua/flashhost/event.lua) */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "flashhost.event");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "new");
  lua_setfield(L, -3, "event");
  lua_pop(L, 1);
  return 1;
}

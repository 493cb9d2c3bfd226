/* placeholder until the metrics segment lands */
#include "fh.h"
int luaopen_flashhost_shm(lua_State *L) { return luaL_error(L, "flashhost.shm is not built"); }

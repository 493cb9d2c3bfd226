/* placeholder until the redis binding lands */
#include "fh.h"
int luaopen_flashhost_redis_driver(lua_State *L) { return luaL_error(L, "flashhost.redis is not built"); }

/* placeholder until the jwt binding lands */
#include "fh.h"
int luaopen_flashhost_jwt(lua_State *L) { return luaL_error(L, "flashhost.jwt is not built"); }

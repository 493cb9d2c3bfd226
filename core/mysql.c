/* placeholder until the mysql binding lands */
#include "fh.h"
int luaopen_flashhost_mysql_driver(lua_State *L) { return luaL_error(L, "flashhost.mysql is not built"); }

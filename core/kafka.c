/* placeholder until the kafka binding lands */
#include "fh.h"
int luaopen_flashhost_kafka_driver(lua_State *L) { return luaL_error(L, "flashhost.kafka is not built"); }

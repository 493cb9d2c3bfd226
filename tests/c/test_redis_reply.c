/*
 * Redis replies as Lua sees them: RESP bytes go through hiredis' own reader,
 * then through the driver's conversion, and the Lua values are checked by a
 * Lua snippet.  No server and no loop needed.
 */
#include "fh.h"
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <string.h>

/* core/redis.c: the driver's reply conversion (no public header: only the
 * driver and this test use it). */
int fh_redis_push_reply(lua_State *L, const redisReply *r);

static int failures;

/* Parses `resp` (one reply), converts it, and runs `check` with the results
 * as `...` and the nil sentinel as the global `null`; `check` returns true. */
static void expect(const char *name, const char *resp, size_t len, const char *check) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  luaopen_flashhost_redis_driver(L);
  lua_getfield(L, -1, "null");
  lua_setglobal(L, "null");
  lua_settop(L, 0);

  redisReader *rd = redisReaderCreate();
  void *reply = NULL;
  redisReaderFeed(rd, resp, len);
  if (redisReaderGetReply(rd, &reply) != REDIS_OK || !reply) {
    printf("not ok - %s: hiredis could not parse the reply\n", name);
    failures++;
    redisReaderFree(rd);
    lua_close(L);
    return;
  }
  if (luaL_loadstring(L, check) != 0) {
    printf("not ok - %s: %s\n", name, lua_tostring(L, -1));
    failures++;
  } else {
    int n = fh_redis_push_reply(L, reply);
    if (lua_pcall(L, n, 1, 0) != 0 || !lua_toboolean(L, -1)) {
      printf("not ok - %s: %s\n", name, lua_isstring(L, -1) ? lua_tostring(L, -1) : "check returned false");
      failures++;
    } else {
      printf("ok - %s\n", name);
    }
  }
  freeReplyObject(reply);
  redisReaderFree(rd);
  lua_close(L);
}

#define EXPECT(name, resp, check) expect(name, resp, sizeof(resp) - 1, check)

int main(void) {
  EXPECT("status", "+OK\r\n", "local v = ... return v == 'OK' and select('#', ...) == 1");
  EXPECT("bulk string, binary safe", "$3\r\na\0b\r\n", "return ... == 'a\\0b'");
  EXPECT("empty bulk string", "$0\r\n\r\n", "return ... == ''");
  EXPECT("integer", ":-42\r\n", "return ... == -42");
  EXPECT("large integer", ":9007199254740992\r\n", "return ... == 2^53");
  EXPECT("nil bulk is the sentinel", "$-1\r\n", "return ... == null and null ~= nil");
  EXPECT("the sentinel is cjson.null", "$-1\r\n", "return ... == require('cjson').null");
  EXPECT("nil array is the sentinel", "*-1\r\n", "return ... == null");
  EXPECT("error reply is false, message, kind", "-ERR no such key\r\n",
         "local a, b, c = ... return a == false and b == 'ERR no such key' and c == 'ERR' and select('#', ...) == 3");
  EXPECT("an error reply's kind is its first word", "-WRONGTYPE Operation against a key\r\n",
         "local a, b, c = ... return a == false and c == 'WRONGTYPE'");
  EXPECT("a one-word error reply is its own kind", "-NOSCRIPT\r\n",
         "local a, b, c = ... return a == false and b == 'NOSCRIPT' and c == 'NOSCRIPT'");
  EXPECT("empty array", "*0\r\n", "local t = ... return type(t) == 'table' and next(t) == nil");
  EXPECT("array keeps its length across nils", "*3\r\n$1\r\na\r\n$-1\r\n:7\r\n",
         "local t = ... return #t == 3 and t[1] == 'a' and t[2] == null and t[3] == 7");
  EXPECT("nested error is a table", "*2\r\n+OK\r\n-WRONGTYPE bad\r\n",
         "local t = ... return t[1] == 'OK' and type(t[2]) == 'table' and t[2].err == 'WRONGTYPE bad'");
  EXPECT("nested arrays", "*2\r\n*2\r\n:1\r\n*1\r\n$1\r\nx\r\n*0\r\n",
         "local t = ... return t[1][1] == 1 and t[1][2][1] == 'x' and #t[2] == 0");
  if (failures) {
    printf("%d reply check(s) failed\n", failures);
    return 1;
  }
  printf("redis replies: all passed\n");
  return 0;
}

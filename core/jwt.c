/* flashhost.jwt: HS256 tokens through libjwt.
 *   verify_hs256(token, secret) -> claims_json | nil, reason
 *   sign_hs256(claims_json, secret) -> token        (tools and tests)
 * Claims come back as JSON text; the Lua side decodes them and checks exp/sub.
 * Only HS256 is accepted: a token naming another algorithm (or "none") fails. */
#include "fh.h"
#include <jwt.h>
#include <stdlib.h>
#include <string.h>

static int l_jwt_verify(lua_State *L) {
  size_t tl, kl;
  const char *token = luaL_checklstring(L, 1, &tl);
  const char *key = luaL_checklstring(L, 2, &kl);
  if (kl == 0) return luaL_argerror(L, 2, "empty secret");
  if (tl > 8192) return fh_push_error(L, "token too long");
  jwt_t *jwt = NULL;
  if (jwt_decode(&jwt, token, (const unsigned char *)key, (int)kl) != 0 || !jwt)
    return fh_push_error(L, "invalid token");
  if (jwt_get_alg(jwt) != JWT_ALG_HS256) {
    jwt_free(jwt);
    return fh_push_error(L, "unsupported algorithm");
  }
  char *claims = jwt_get_grants_json(jwt, NULL);
  jwt_free(jwt);
  if (!claims) return fh_push_error(L, "no claims");
  lua_pushstring(L, claims);
  free(claims);
  return 1;
}

static int l_jwt_sign(lua_State *L) {
  const char *claims = luaL_checkstring(L, 1);
  size_t kl;
  const char *key = luaL_checklstring(L, 2, &kl);
  jwt_t *jwt = NULL;
  if (jwt_new(&jwt) != 0) return fh_push_error(L, "out of memory");
  if (jwt_add_grants_json(jwt, claims) != 0 ||
      jwt_set_alg(jwt, JWT_ALG_HS256, (const unsigned char *)key, (int)kl) != 0) {
    jwt_free(jwt);
    return luaL_argerror(L, 1, "claims must be a JSON object");
  }
  char *tok = jwt_encode_str(jwt);
  jwt_free(jwt);
  if (!tok) return fh_push_error(L, "cannot encode");
  lua_pushstring(L, tok);
  free(tok);
  return 1;
}

int luaopen_flashhost_jwt(lua_State *L) {
  static const luaL_Reg fns[] = {{"verify_hs256", l_jwt_verify}, {"sign_hs256", l_jwt_sign}, {NULL, NULL}};
  lua_newtable(L);
  luaL_register(L, NULL, fns);
  return 1;
}

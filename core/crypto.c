/* flashhost.crypto: keyed hashes and randomness through OpenSSL's libcrypto.
 *   hmac_sha256(key, message)  -> 32 raw bytes
 *   hmac_sha256_hex(key, message) -> 64 lower-case hex characters
 *   equal(a, b)       -> true when the strings are equal; the time taken depends
 *                        only on their lengths (CRYPTO_memcmp), so a forged
 *                        signature learns nothing from how fast it was refused
 *   random_bytes(n)   -> n bytes from OpenSSL's CSPRNG (1..4096) | nil, reason
 * Nothing here is a hash of our own: OpenSSL computes, this file only marshals. */
#include "fh.h"
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

static int fh_crypto__hmac(lua_State *L, unsigned char *out) {
  size_t kl, ml;
  const char *key = luaL_checklstring(L, 1, &kl);
  const char *msg = luaL_checklstring(L, 2, &ml);
  /* An empty key is a configuration bug, not a weak secret to accept. */
  if (kl == 0) return luaL_argerror(L, 1, "empty key");
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), key, (int)kl, (const unsigned char *)msg, ml, out, &len) || len != 32)
    return luaL_error(L, "HMAC-SHA256 failed");
  return 32;
}

static int fh_crypto_hmac_sha256(lua_State *L) {
  unsigned char mac[32];
  fh_crypto__hmac(L, mac);
  lua_pushlstring(L, (const char *)mac, sizeof mac);
  return 1;
}

static int fh_crypto_hmac_sha256_hex(lua_State *L) {
  static const char digits[] = "0123456789abcdef";
  unsigned char mac[32];
  char hex[64];
  fh_crypto__hmac(L, mac);
  for (int i = 0; i < 32; i++) {
    hex[2 * i] = digits[mac[i] >> 4];
    hex[2 * i + 1] = digits[mac[i] & 15];
  }
  lua_pushlstring(L, hex, sizeof hex);
  return 1;
}

static int fh_crypto_equal(lua_State *L) {
  size_t al, bl;
  const char *a = luaL_checklstring(L, 1, &al);
  const char *b = luaL_checklstring(L, 2, &bl);
  /* Lengths are public (a MAC has a fixed size); only the bytes are compared in constant time. */
  lua_pushboolean(L, al == bl && CRYPTO_memcmp(a, b, al) == 0);
  return 1;
}

static int fh_crypto_random_bytes(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  if (n < 1 || n > 4096) return luaL_argerror(L, 1, "1..4096 bytes");
  unsigned char buf[4096];
  if (RAND_bytes(buf, (int)n) != 1) return fh_push_error(L, "no randomness available");
  lua_pushlstring(L, (const char *)buf, (size_t)n);
  return 1;
}

int luaopen_flashhost_crypto(lua_State *L) {
  static const luaL_Reg fns[] = {{"hmac_sha256", fh_crypto_hmac_sha256},
                                 {"hmac_sha256_hex", fh_crypto_hmac_sha256_hex},
                                 {"equal", fh_crypto_equal},
                                 {"random_bytes", fh_crypto_random_bytes},
                                 {NULL, NULL}};
  lua_newtable(L);
  luaL_register(L, NULL, fns);
  return 1;
}

/*
 * flashhost.metrics.store: the process's metric samples, kept in C so they
 * survive hot reloads (a reload replaces the Lua state, and counters must not
 * drop to zero with it).  The Lua facade (flashhost.metrics) builds label
 * strings and calls in here; render() produces Prometheus text.
 *
 * A sample is a full series name ("x_total{a=\"b\"}") and a double.  Families
 * keep their samples in creation order; a histogram instance (family+labels)
 * remembers where its bucket samples start, so observe() is one lookup.
 *
 * carry()/carried() keep one more piece of text for the process's life: the
 * counters a replaced worker left behind, which this process keeps reporting
 * (core/lua/flashhost/metrics.lua).
 */
#include "fh.h"
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <math.h>

#define FH_MAX_BUCKETS 32

typedef struct { char *key; int val; } fh_metrics__slot;
typedef struct { fh_metrics__slot *slots; size_t cap, len; } fh_metrics__map;

typedef struct {
  char *name, *help, *kind;
  double buckets[FH_MAX_BUCKETS];
  int nbuckets;
  int *samples;
  size_t nsamples, capsamples;
} fh_metrics__family;

static fh_metrics__map fh_metrics__series, fh_metrics__hists, fh_metrics__fams;
static char **fh_metrics__names;
static double *fh_metrics__values;
static size_t fh_metrics__n, fh_metrics__cap;
static fh_metrics__family *fh_metrics__families;
static size_t fh_metrics__nfam, fh_metrics__capfam;

static uint64_t fh_metrics__hash(const char *s) {
  uint64_t h = 1469598103934665603ULL;
  while (*s) { h ^= (unsigned char)*s++; h *= 1099511628211ULL; }
  return h;
}

static int fh_metrics__map_get(fh_metrics__map *m, const char *key) {
  if (!m->cap) return -1;
  for (size_t i = fh_metrics__hash(key) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
    if (!m->slots[i].key) return -1;
    if (strcmp(m->slots[i].key, key) == 0) return m->slots[i].val;
  }
}

static void fh_metrics__map_put(fh_metrics__map *m, const char *key, int val) {
  if ((m->len + 1) * 2 > m->cap) {
    size_t cap = m->cap ? m->cap * 2 : 64;
    fh_metrics__map grown = {calloc(cap, sizeof(fh_metrics__slot)), cap, 0};
    if (!grown.slots) abort();
    for (size_t i = 0; i < m->cap; i++)
      if (m->slots[i].key) {
        size_t j = fh_metrics__hash(m->slots[i].key) & (grown.cap - 1);
        while (grown.slots[j].key) j = (j + 1) & (grown.cap - 1);
        grown.slots[j] = m->slots[i];
        grown.len++;
      }
    free(m->slots);
    *m = grown;
  }
  size_t i = fh_metrics__hash(key) & (m->cap - 1);
  while (m->slots[i].key) i = (i + 1) & (m->cap - 1);
  m->slots[i].key = strdup(key);
  m->slots[i].val = val;
  m->len++;
}

static fh_metrics__family *fh_metrics__family_get(lua_State *L, const char *name) {
  int f = fh_metrics__map_get(&fh_metrics__fams, name);
  if (f < 0) luaL_error(L, "metric %s is not defined", name);
  return &fh_metrics__families[f];
}

/* New sample in family f, value 0; returns its index. */
static int fh_metrics__sample_new(fh_metrics__family *f, const char *series) {
  if (fh_metrics__n == fh_metrics__cap) {
    fh_metrics__cap = fh_metrics__cap ? fh_metrics__cap * 2 : 256;
    fh_metrics__names = realloc(fh_metrics__names, fh_metrics__cap * sizeof *fh_metrics__names);
    fh_metrics__values = realloc(fh_metrics__values, fh_metrics__cap * sizeof *fh_metrics__values);
    if (!fh_metrics__names || !fh_metrics__values) abort();
  }
  int idx = (int)fh_metrics__n++;
  fh_metrics__names[idx] = strdup(series);
  fh_metrics__values[idx] = 0;
  if (f->nsamples == f->capsamples) {
    f->capsamples = f->capsamples ? f->capsamples * 2 : 8;
    f->samples = realloc(f->samples, f->capsamples * sizeof *f->samples);
    if (!f->samples) abort();
  }
  f->samples[f->nsamples++] = idx;
  fh_metrics__map_put(&fh_metrics__series, series, idx);
  return idx;
}

/* define(name, kind, help [, buckets]) — idempotent across reloads */
static int l_metrics_define(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  const char *kind = luaL_checkstring(L, 2);
  const char *help = luaL_optstring(L, 3, name);
  int f = fh_metrics__map_get(&fh_metrics__fams, name);
  if (f >= 0) {
    const char *had = fh_metrics__families[f].kind;
    if (strcmp(had, kind) != 0) return luaL_error(L, "metric %s is a %s", name, had);
    return 0;
  }
  if (fh_metrics__nfam == fh_metrics__capfam) {
    fh_metrics__capfam = fh_metrics__capfam ? fh_metrics__capfam * 2 : 32;
    fh_metrics__families = realloc(fh_metrics__families, fh_metrics__capfam * sizeof *fh_metrics__families);
    if (!fh_metrics__families) abort();
  }
  fh_metrics__family *fam = &fh_metrics__families[fh_metrics__nfam];
  memset(fam, 0, sizeof *fam);
  fam->name = strdup(name);
  fam->kind = strdup(kind);
  fam->help = strdup(help);
  if (lua_istable(L, 4)) {
    int n = (int)lua_objlen(L, 4);
    if (n > FH_MAX_BUCKETS) return luaL_error(L, "at most %d buckets", FH_MAX_BUCKETS);
    for (int i = 1; i <= n; i++) {
      lua_rawgeti(L, 4, i);
      fam->buckets[i - 1] = lua_tonumber(L, -1);
      lua_pop(L, 1);
    }
    fam->nbuckets = n;
  }
  fh_metrics__map_put(&fh_metrics__fams, name, (int)fh_metrics__nfam++);
  return 0;
}

static char *fh_metrics__series_name(char *buf, size_t cap, const char *name, const char *suffix,
                             const char *labels, const char *extra) {
  int has = labels && *labels, hx = extra && *extra;
  if (has || hx)
    snprintf(buf, cap, "%s%s{%s%s%s}", name, suffix, has ? labels : "", has && hx ? "," : "", hx ? extra : "");
  else
    snprintf(buf, cap, "%s%s", name, suffix);
  return buf;
}

/* The sample of a counter or gauge series, made on first use. */
static int fh_metrics__series_index(lua_State *L, const char *name, const char *labels) {
  char series[1024];
  fh_metrics__series_name(series, sizeof series, name, "", labels, NULL);
  int idx = fh_metrics__map_get(&fh_metrics__series, series);
  if (idx < 0) idx = fh_metrics__sample_new(fh_metrics__family_get(L, name), series);
  return idx;
}

/* add(name, labels, v) for counters and gauges; set(name, labels, v) for gauges */
static int fh_metrics__update(lua_State *L, int set) {
  const char *name = luaL_checkstring(L, 1);
  const char *labels = luaL_optstring(L, 2, "");
  double v = luaL_optnumber(L, 3, 1);
  int idx = fh_metrics__series_index(L, name, labels);
  fh_metrics__values[idx] = set ? v : fh_metrics__values[idx] + v;
  return 0;
}
static int l_metrics_add(lua_State *L) { return fh_metrics__update(L, 0); }
static int l_metrics_set(lua_State *L) { return fh_metrics__update(L, 1); }

static void fh_metrics__fmt_le(char *buf, size_t cap, double le) {
  snprintf(buf, cap, "le=\"%.6g\"", le);
}

/* The first sample of a histogram series (its buckets, +Inf, sum and count
 * follow it), made on first use. */
static int fh_metrics__hist_first(lua_State *L, const char *name, const char *labels) {
  char key[1024];
  snprintf(key, sizeof key, "%s|%s", name, labels);
  int first = fh_metrics__map_get(&fh_metrics__hists, key);
  if (first >= 0) return first;
  fh_metrics__family *f = fh_metrics__family_get(L, name);
  char series[1024], le[64];
  for (int i = 0; i < f->nbuckets; i++) {
    fh_metrics__fmt_le(le, sizeof le, f->buckets[i]);
    fh_metrics__series_name(series, sizeof series, name, "_bucket", labels, le);
    int idx = fh_metrics__sample_new(f, series);
    if (i == 0) first = idx;
  }
  fh_metrics__series_name(series, sizeof series, name, "_bucket", labels, "le=\"+Inf\"");
  int inf = fh_metrics__sample_new(f, series);
  if (first < 0) first = inf;
  fh_metrics__sample_new(f, fh_metrics__series_name(series, sizeof series, name, "_sum", labels, NULL));
  fh_metrics__sample_new(f, fh_metrics__series_name(series, sizeof series, name, "_count", labels, NULL));
  fh_metrics__map_put(&fh_metrics__hists, key, first);
  return first;
}

static void fh_metrics__hist_add(const fh_metrics__family *f, int first, double v) {
  /* samples of one instance are consecutive: buckets, +Inf, sum, count */
  for (int i = 0; i < f->nbuckets; i++)
    if (v <= f->buckets[i]) fh_metrics__values[first + i] += 1;
  fh_metrics__values[first + f->nbuckets] += 1;
  fh_metrics__values[first + f->nbuckets + 1] += v;
  fh_metrics__values[first + f->nbuckets + 2] += 1;
}

/* observe(name, labels, v) for histograms */
static int l_metrics_observe(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  const char *labels = luaL_optstring(L, 2, "");
  double v = luaL_checknumber(L, 3);
  int first = fh_metrics__hist_first(L, name, labels);
  fh_metrics__hist_add(fh_metrics__family_get(L, name), first, v);
  return 0;
}

/* slot(name, labels) -> sample, family: the sample of a counter or gauge
 * series (a histogram's first one) and its family's index, both stable for
 * the life of the process.  A caller that keeps them updates through
 * add_at/set_at/observe_at, with no series name to format and look up on
 * every update. */
static int l_metrics_slot(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  const char *labels = luaL_optstring(L, 2, "");
  int f = fh_metrics__map_get(&fh_metrics__fams, name);
  if (f < 0) return luaL_error(L, "metric %s is not defined", name);
  int hist = strcmp(fh_metrics__families[f].kind, "histogram") == 0;
  lua_pushinteger(L, hist ? fh_metrics__hist_first(L, name, labels) : fh_metrics__series_index(L, name, labels));
  lua_pushinteger(L, f);
  return 2;
}

static int fh_metrics__check_sample(lua_State *L, int arg, size_t extra) {
  lua_Integer idx = luaL_checkinteger(L, arg);
  luaL_argcheck(L, idx >= 0 && (size_t)idx + extra < fh_metrics__n, arg, "no such sample");
  return (int)idx;
}

/* add_at(sample, v), set_at(sample, v): a slot's counter or gauge */
static int l_metrics_add_at(lua_State *L) {
  int idx = fh_metrics__check_sample(L, 1, 0);
  fh_metrics__values[idx] += luaL_optnumber(L, 2, 1);
  return 0;
}
static int l_metrics_set_at(lua_State *L) {
  int idx = fh_metrics__check_sample(L, 1, 0);
  fh_metrics__values[idx] = luaL_checknumber(L, 2);
  return 0;
}

/* observe_at(sample, family, v): a slot's histogram */
static int l_metrics_observe_at(lua_State *L) {
  lua_Integer f = luaL_checkinteger(L, 2);
  luaL_argcheck(L, f >= 0 && (size_t)f < fh_metrics__nfam, 2, "no such family");
  const fh_metrics__family *fam = &fh_metrics__families[f];
  int first = fh_metrics__check_sample(L, 1, (size_t)fam->nbuckets + 2);
  fh_metrics__hist_add(fam, first, luaL_checknumber(L, 3));
  return 0;
}

/* carry(text) once per process; carried() -> that text, or nil before. */
static char *fh_metrics__carried;
static size_t fh_metrics__carried_len;

static int l_metrics_carry(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  char *copy = malloc(n + 1);
  if (!copy) return luaL_error(L, "out of memory");
  memcpy(copy, s, n + 1);
  free(fh_metrics__carried);
  fh_metrics__carried = copy;
  fh_metrics__carried_len = n;
  return 0;
}

static int l_metrics_carried(lua_State *L) {
  if (fh_metrics__carried) lua_pushlstring(L, fh_metrics__carried, fh_metrics__carried_len);
  else lua_pushnil(L);
  return 1;
}

/* render() -> Prometheus text of this process */
static int l_metrics_render(lua_State *L) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  char line[1400];
  for (size_t fi = 0; fi < fh_metrics__nfam; fi++) {
    fh_metrics__family *f = &fh_metrics__families[fi];
    snprintf(line, sizeof line, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name, f->kind);
    luaL_addstring(&b, line);
    for (size_t i = 0; i < f->nsamples; i++) {
      double v = fh_metrics__values[f->samples[i]];
      const char *series = fh_metrics__names[f->samples[i]];
      if (v == floor(v) && fabs(v) < 1e15) snprintf(line, sizeof line, "%s %.0f\n", series, v);
      else snprintf(line, sizeof line, "%s %.9g\n", series, v);
      luaL_addstring(&b, line);
    }
  }
  luaL_pushresult(&b);
  return 1;
}

int luaopen_flashhost_metrics_store(lua_State *L) {
  static const luaL_Reg fns[] = {
    {"define", l_metrics_define}, {"add", l_metrics_add}, {"set", l_metrics_set},
    {"observe", l_metrics_observe}, {"render", l_metrics_render}, {"carry", l_metrics_carry},
    {"carried", l_metrics_carried}, {"slot", l_metrics_slot}, {"add_at", l_metrics_add_at},
    {"set_at", l_metrics_set_at}, {"observe_at", l_metrics_observe_at}, {NULL, NULL}};
  lua_newtable(L);
  luaL_register(L, NULL, fns);
  return 1;
}

/*
 * smoke_redis: can this machine talk to the stack's Redis at all?
 *
 * Sends PING through hiredis' blocking API and expects +PONG. Reads REDIS_HOST
 * (default 127.0.0.1) and REDIS_PORT (default 6379). Exits 0 on success, 1 with a
 * message on stderr otherwise.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <hiredis/hiredis.h>

static const char *env_or(const char *name, const char *def)
{
    const char *v = getenv(name);
    return v && *v ? v : def;
}

int main(void)
{
    const char *host = env_or("REDIS_HOST", "127.0.0.1");
    int port = atoi(env_or("REDIS_PORT", "6379"));
    struct timeval tv = {3, 0};
    redisContext *c;
    redisReply *r;
    int ok;

    c = redisConnectWithTimeout(host, port, tv);
    if (c == NULL || c->err) {
        fprintf(stderr, "smoke_redis: cannot connect to %s:%d: %s\n", host, port,
                c ? c->errstr : "out of memory");
        if (c)
            redisFree(c);
        return 1;
    }
    /* The connect timeout does not cover replies; without this a stuck server hangs us. */
    redisSetTimeout(c, tv);

    r = redisCommand(c, "PING");
    if (r == NULL) {
        fprintf(stderr, "smoke_redis: PING failed: %s\n", c->errstr);
        redisFree(c);
        return 1;
    }
    ok = r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
    if (!ok)
        fprintf(stderr, "smoke_redis: expected PONG, got type %d '%s'\n", r->type,
                r->str ? r->str : "");
    else
        printf("smoke_redis: PONG from %s:%d\n", host, port);
    freeReplyObject(r);
    redisFree(c);
    return ok ? 0 : 1;
}

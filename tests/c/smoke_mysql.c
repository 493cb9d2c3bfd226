/*
 * smoke_mysql: can we log in to the stack's MariaDB as the application user?
 *
 * Connects over TCP with MariaDB Connector/C (blocking API) and checks that SELECT 1
 * answers 1. Reads MYSQL_HOST (127.0.0.1), MYSQL_PORT (3306), MYSQL_USER (flashuser),
 * MYSQL_PASSWORD (flashpass), MYSQL_DATABASE (flash_sale). Exits 0 on success, 1 with a
 * message on stderr otherwise.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mysql.h>

static const char *env_or(const char *name, const char *def)
{
    const char *v = getenv(name);
    return v && *v ? v : def;
}

int main(void)
{
    const char *host = env_or("MYSQL_HOST", "127.0.0.1");
    unsigned port = (unsigned)atoi(env_or("MYSQL_PORT", "3306"));
    const char *user = env_or("MYSQL_USER", "flashuser");
    const char *pass = env_or("MYSQL_PASSWORD", "flashpass");
    const char *db = env_or("MYSQL_DATABASE", "flash_sale");
    unsigned timeout = 5;
    unsigned proto = MYSQL_PROTOCOL_TCP;
    MYSQL *m;
    MYSQL_RES *res;
    MYSQL_ROW row;
    int rc = 1;

    m = mysql_init(NULL);
    if (m == NULL) {
        fprintf(stderr, "smoke_mysql: mysql_init failed\n");
        return 1;
    }
    /* Force TCP: "localhost" would otherwise mean the Unix socket, which is not ours. */
    mysql_options(m, MYSQL_OPT_PROTOCOL, &proto);
    mysql_options(m, MYSQL_OPT_CONNECT_TIMEOUT, &timeout);
    mysql_options(m, MYSQL_OPT_READ_TIMEOUT, &timeout);
    mysql_options(m, MYSQL_OPT_WRITE_TIMEOUT, &timeout);

    if (!mysql_real_connect(m, host, user, pass, db, port, NULL, 0)) {
        fprintf(stderr, "smoke_mysql: cannot connect to %s:%u as %s (db %s): %s\n", host,
                port, user, db, mysql_error(m));
        goto out;
    }
    if (mysql_query(m, "SELECT 1") != 0) {
        fprintf(stderr, "smoke_mysql: SELECT 1 failed: %s\n", mysql_error(m));
        goto out;
    }
    res = mysql_store_result(m);
    if (res == NULL) {
        fprintf(stderr, "smoke_mysql: no result set: %s\n", mysql_error(m));
        goto out;
    }
    row = mysql_fetch_row(res);
    if (row == NULL || row[0] == NULL || strcmp(row[0], "1") != 0) {
        fprintf(stderr, "smoke_mysql: SELECT 1 answered '%s'\n",
                row && row[0] ? row[0] : "(nothing)");
    } else {
        printf("smoke_mysql: SELECT 1 = 1 on %s:%u as %s, server %s\n", host, port, user,
               mysql_get_server_info(m));
        rc = 0;
    }
    mysql_free_result(res);
out:
    mysql_close(m);
    mysql_library_end();
    return rc;
}

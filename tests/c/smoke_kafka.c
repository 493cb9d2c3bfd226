/*
 * smoke_kafka: does the stack's Kafka broker do what flashhost needs from it?
 *
 *   1. answers a metadata request;
 *   2. creates a topic through the Admin API (auto-creation is off on our broker);
 *   3. accepts a message from an idempotent producer (the relay's settings);
 *   4. hands the same message to a member of a consumer group.
 *
 * The topic name is unique per run, so runs never see each other's messages; the topic
 * is deleted again at the end. Reads KAFKA_BROKERS, or 127.0.0.1:KAFKA_PORT (default
 * 9092). Every wait is bounded. Exits 0 on success, 1 with a message otherwise.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#define STEP_MS 15000       /* metadata, topic creation, delivery */
#define CONSUME_MS 30000    /* group join + fetch */

static int delivered;       /* 0 pending, 1 ok, -1 failed */
static rd_kafka_resp_err_t delivery_err;

static void fail(const char *what, const char *why)
{
    fprintf(stderr, "smoke_kafka: %s: %s\n", what, why);
    exit(1);
}

static void set(rd_kafka_conf_t *conf, const char *k, const char *v)
{
    char errstr[512];

    if (rd_kafka_conf_set(conf, k, v, errstr, sizeof errstr) != RD_KAFKA_CONF_OK)
        fail(k, errstr);
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    (void)opaque;
    delivery_err = m->err;
    delivered = m->err ? -1 : 1;
}

static long long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Fills buf with 2*n lowercase hex digits from /dev/urandom. */
static void random_hex(char *buf, size_t n)
{
    unsigned char raw[32];
    FILE *f = fopen("/dev/urandom", "rb");
    size_t i;

    if (n > sizeof raw || f == NULL || fread(raw, 1, n, f) != n)
        fail("random", "cannot read /dev/urandom");
    fclose(f);
    for (i = 0; i < n; i++)
        sprintf(buf + 2 * i, "%02x", raw[i]);
}

/* Waits for one admin result event on q; fails the test on a timeout. */
static rd_kafka_event_t *admin_wait(rd_kafka_queue_t *q, rd_kafka_event_type_t type,
                                    const char *what)
{
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, STEP_MS + 5000);

    if (ev == NULL)
        fail(what, "no answer from the broker in time");
    if (rd_kafka_event_type(ev) != type)
        fail(what, "unexpected event type");
    if (rd_kafka_event_error(ev))
        fail(what, rd_kafka_event_error_string(ev));
    return ev;
}

static void create_topic(rd_kafka_t *rk, const char *topic)
{
    char errstr[512];
    rd_kafka_NewTopic_t *nt;
    rd_kafka_AdminOptions_t *opts;
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_event_t *ev;
    const rd_kafka_topic_result_t **res;
    size_t cnt;
    rd_kafka_resp_err_t err;

    nt = rd_kafka_NewTopic_new(topic, 1, 1, errstr, sizeof errstr);
    if (nt == NULL)
        fail("NewTopic", errstr);
    opts = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_AdminOptions_set_request_timeout(opts, STEP_MS, errstr, sizeof errstr);
    /* Ask the broker to answer only once the topic exists, not merely once it is queued. */
    rd_kafka_AdminOptions_set_operation_timeout(opts, STEP_MS, errstr, sizeof errstr);

    rd_kafka_CreateTopics(rk, &nt, 1, opts, q);
    ev = admin_wait(q, RD_KAFKA_EVENT_CREATETOPICS_RESULT, "CreateTopics");
    res = rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &cnt);
    if (cnt != 1)
        fail("CreateTopics", "expected one topic result");
    err = rd_kafka_topic_result_error(res[0]);
    /* Someone creating it first is as good as creating it ourselves. */
    if (err && err != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
        fail("CreateTopics", rd_kafka_topic_result_error_string(res[0]));

    rd_kafka_event_destroy(ev);
    rd_kafka_AdminOptions_destroy(opts);
    rd_kafka_NewTopic_destroy(nt);
    rd_kafka_queue_destroy(q);
}

/* Best effort: a leftover topic is harmless, so failures here only warn. */
static void delete_topic(rd_kafka_t *rk, const char *topic)
{
    rd_kafka_DeleteTopic_t *dt = rd_kafka_DeleteTopic_new(topic);
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_event_t *ev;

    rd_kafka_DeleteTopics(rk, &dt, 1, NULL, q);
    ev = rd_kafka_queue_poll(q, STEP_MS);
    if (ev == NULL || rd_kafka_event_error(ev))
        fprintf(stderr, "smoke_kafka: warning: could not delete topic %s\n", topic);
    if (ev)
        rd_kafka_event_destroy(ev);
    rd_kafka_DeleteTopic_destroy(dt);
    rd_kafka_queue_destroy(q);
}

static void consume_back(const char *brokers, const char *topic, const char *group,
                         const char *payload)
{
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_t *rk;
    rd_kafka_topic_partition_list_t *subs;
    rd_kafka_resp_err_t err;
    long long deadline;
    int found = 0;

    set(conf, "bootstrap.servers", brokers);
    set(conf, "group.id", group);
    /* The group is new and has no committed offset: start from the beginning. */
    set(conf, "auto.offset.reset", "earliest");
    rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (rk == NULL)
        fail("consumer", errstr);
    rd_kafka_poll_set_consumer(rk);

    subs = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(subs, topic, RD_KAFKA_PARTITION_UA);
    err = rd_kafka_subscribe(rk, subs);
    rd_kafka_topic_partition_list_destroy(subs);
    if (err)
        fail("subscribe", rd_kafka_err2str(err));

    deadline = now_ms() + CONSUME_MS;
    while (!found && now_ms() < deadline) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 500);

        if (m == NULL)
            continue;
        if (m->err) {
            /* Transient while the group forms or metadata catches up; keep polling. */
            fprintf(stderr, "smoke_kafka: consumer: %s\n", rd_kafka_message_errstr(m));
        } else if (m->len == strlen(payload) && memcmp(m->payload, payload, m->len) == 0) {
            found = 1;
        } else {
            fprintf(stderr, "smoke_kafka: unexpected message of %zu bytes at offset %lld\n",
                    m->len, (long long)m->offset);
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    if (!found)
        fail("consume", "the produced message did not come back within 30 s");
}

int main(void)
{
    char brokers[256], topic[64], group[64], payload[65], id[17], errstr[512];
    const char *env = getenv("KAFKA_BROKERS");
    const char *port = getenv("KAFKA_PORT");
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    const struct rd_kafka_metadata *md;
    rd_kafka_resp_err_t err;
    rd_kafka_t *rk;
    long long t0 = now_ms(), deadline;

    if (env && *env)
        snprintf(brokers, sizeof brokers, "%s", env);
    else
        snprintf(brokers, sizeof brokers, "127.0.0.1:%s", port && *port ? port : "9092");
    random_hex(id, 8);
    snprintf(topic, sizeof topic, "fh-smoke-%d-%s", (int)getpid(), id);
    snprintf(group, sizeof group, "fh-smoke-group-%s", id);
    random_hex(payload, 32);

    set(conf, "bootstrap.servers", brokers);
    set(conf, "enable.idempotence", "true");
    set(conf, "message.timeout.ms", "15000");
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (rk == NULL)
        fail("producer", errstr);

    err = rd_kafka_metadata(rk, 1, NULL, &md, STEP_MS);
    if (err)
        fail("metadata", rd_kafka_err2str(err));
    printf("smoke_kafka: %s answers: %d broker(s), %d topic(s)\n", brokers, md->broker_cnt,
           md->topic_cnt);
    rd_kafka_metadata_destroy(md);

    create_topic(rk, topic);
    printf("smoke_kafka: created topic %s\n", topic);

    err = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic),
                            RD_KAFKA_V_VALUE(payload, strlen(payload)),
                            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
    if (err)
        fail("produce", rd_kafka_err2str(err));
    deadline = now_ms() + STEP_MS + 5000;
    while (delivered == 0 && now_ms() < deadline)
        rd_kafka_poll(rk, 200);
    if (delivered != 1)
        fail("delivery", delivered ? rd_kafka_err2str(delivery_err) : "no delivery report");
    printf("smoke_kafka: produced %s\n", payload);

    consume_back(brokers, topic, group, payload);
    printf("smoke_kafka: consumed it back through group %s (%lld ms in all)\n", group,
           now_ms() - t0);

    delete_topic(rk, topic);
    rd_kafka_flush(rk, 5000);
    rd_kafka_destroy(rk);
    return 0;
}

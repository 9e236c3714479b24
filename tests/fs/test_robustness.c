/*
 * test_robustness.c — SPEC §8: no bad input crashes the server, corrupts
 * the store, or changes the bus's state (logs and counters of rejections
 * aside).
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A fixed xorshift stream, so a failure can be replayed. */
static uint32_t next_random(uint32_t *state)
{
    uint32_t x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *state = x;
}

/* What a user sees of the bus: agents, inboxes, ctl of each agent. */
static char *snapshot(void)
{
    json_t *all = json_object();
    size_t n;
    char **agents = bus_ls(AT("agents"), &n);
    cr_assert(agents);
    for (size_t i = 0; i < n; i++) {
        json_t *one = json_object();
        json_object_set_new(one, "inbox", bus_inbox(agents[i]));
        json_t *ctl = bus_ctl(agents[i]);
        json_object_del(ctl, "reserved");
        json_object_set_new(one, "ctl", ctl);
        json_object_set_new(all, agents[i], one);
    }
    bus_ls_free(agents, n);
    char *text = json_dumps(all, JSON_SORT_KEYS | JSON_COMPACT);
    json_decref(all);
    return text;
}

BUS_TEST(robustness, garbage_writes_change_nothing_and_the_store_stays_consistent)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "keep");
    cr_assert_eq(bus_append(AT("agents/bob/send"), "{\"to\":\"alice\",\"payload\":[1]}\n"), 0);
    char *before = snapshot();

    static const char *const bad_records[] = {
        "}",
        "{}",
        "[]",
        "null",
        "\"str\"",
        "{\"to\":\"\"}",
        "{\"to\":[\"bob\"],\"payload\":1}",
        "\x01\x02",
        "{\"to\":\"bob\",\"payload\":1,\"requires_ack\":null}",
        "{\"to\":\"bob\",\"payload\":1,\"from\":\"\"}",
    };
    for (size_t i = 0; i < sizeof bad_records / sizeof *bad_records; i++) {
        char rec[256];
        snprintf(rec, sizeof rec, "%s\n", bad_records[i]);
        cr_assert_neq(bus_append(AT("agents/alice/send"), rec), 0, "send accepted %s",
                      bad_records[i]);
    }
    static const char *const bad_ctl[] = {"ack\n",           "ack MSG-bogus\n", "drain drain\n",
                                          "resume please\n", "\x01\n",          "DRAIN\n"};
    for (size_t i = 0; i < sizeof bad_ctl / sizeof *bad_ctl; i++)
        cr_assert_neq(bus_write(AT("agents/bob/ctl"), bad_ctl[i]), 0, "ctl accepted [%s]",
                      bad_ctl[i]);

    uint32_t state = 0x2545f491u;
    char noise[4096];
    for (int round = 0; round < 20; round++) {
        for (size_t k = 0; k < sizeof noise; k++)
            noise[k] = (char)(next_random(&state) & 0xff);
        noise[0] = (char)(0x80 | (next_random(&state) & 0x7f)); /* never valid JSON */
        const char *targets[] = {"agents/alice/send", "agents/bob/ctl"};
        const char *target = targets[round % 2];
        int err = bus_write_ex(AT("%s", target), O_WRONLY | O_APPEND, noise, sizeof noise, NULL);
        cr_assert_neq(err, 0, "%s accepted 4 KiB of noise", target);
    }
    static const char *const bad_names[] = {"\x01", "a\nb", "%s%n", "a/../b", "a b"};
    for (size_t i = 0; i < sizeof bad_names / sizeof *bad_names; i++)
        cr_assert(mkdir(AT("agents/%s", bad_names[i]), 0755) < 0, "mkdir accepted a bad name");

    char *after = snapshot();
    cr_assert_str_eq(after, before, "bad input changed the bus");
    free(before);
    free(after);

    bus_terminate(&bus);
    char *argv[] = {(char *)bus_bin(), "--check", "--store", bus.store, NULL};
    struct bus_cmd r;
    int status = bus_exec(NULL, argv, BUS_WAIT_MS, &r);
    cr_assert_eq(status, 0, "busfs --check after bad input: %d: %s%s", status, r.out, r.err);
    bus_cmd_free(&r);
}

/* A message file's whole name must match: the right delivery number with another
 * msg_id names nothing, so stat and rm agree (ENOENT) and nothing is consumed. */
BUS_TEST(robustness, a_message_name_with_a_wrong_msg_id_does_not_exist)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "keep me");
    size_t n;
    char **names = bus_ls(AT("agents/bob/inbox"), &n);
    cr_assert(names && n == 1);
    char wrong[256];
    snprintf(wrong, sizeof wrong, "%s", names[0]);
    char *stamp = strstr(wrong, "-MSG-");  /* -MSG-<date>-<time>-<store id>-<counter> */
    cr_assert(stamp);
    stamp[5] = stamp[5] == '1' ? '2' : '1';  /* another year, the same numbers */
    struct stat st;
    cr_assert_eq(stat(AT("agents/bob/inbox/%s", wrong), &st), -1, "%s exists", wrong);
    cr_assert_eq(errno, ENOENT);
    cr_assert_eq(unlink(AT("agents/bob/inbox/%s", wrong)), -1);
    cr_assert_eq(errno, ENOENT);
    cr_assert_eq(stat(AT("agents/bob/outbox/%s", wrong), &st), -1);
    cr_assert_eq(stat(AT("agents/alice/outbox/%s", wrong), &st), -1);
    cr_assert_eq(stat(AT("agents/alice/outbox/%s", names[0]), &st), 0, "the real name exists");
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 1, "nothing was consumed");
    bus_ls_free(names, n);
}

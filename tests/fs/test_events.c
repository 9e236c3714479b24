/*
 * test_events.c — SPEC §10, events: the top-level `events` file is a growing log of
 * JSON lines, one per delivery, ack, lease, redelivery, dead letter, agent change,
 * drain/resume, health change and alert change, with a store-wide gapless seq that
 * goes on across restarts; `tail -f` (a reader at the end) sees new lines, and
 * poll() on a reader at the end wakes when one arrives.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The events file, parsed, one JSON object per line. */
static json_t *events_now(void)
{
    return bus_jsonl(AT("events"));
}

static long long seq_at(json_t *list, size_t i)
{
    return (long long)json_integer_value(json_object_get(json_array_get(list, i), "seq"));
}

static void assert_gapless(json_t *list)
{
    for (size_t i = 1; i < json_array_size(list); i++)
        cr_assert_eq(seq_at(list, i), seq_at(list, i - 1) + 1, "seq %lld follows %lld",
                     seq_at(list, i), seq_at(list, i - 1));
}

static bool has_event(json_t *list, const char *kind, const char *agent)
{
    for (size_t i = 0; i < json_array_size(list); i++) {
        json_t *e = json_array_get(list, i);
        if (strcmp(bus_str(e, "event"), kind) == 0 &&
            (!agent || strcmp(bus_str(e, "agent"), agent) == 0))
            return true;
    }
    return false;
}

BUS_TEST(events, cat_events_tells_what_happened_with_gapless_seqs)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "one");
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "cat agents/bob/claim > /dev/null && rm agents/bob/inflight/* "
                        "&& echo drain > agents/bob/ctl && echo healthy > agents/alice/health"),
                 0, "%s", r.err);
    bus_cmd_free(&r);
    struct stat st;
    cr_assert_eq(stat(AT("events"), &st), 0);
    cr_assert_eq(st.st_mode & 07777, 0444, "events is %o", st.st_mode & 07777);
    json_t *list = events_now();
    cr_assert_geq(json_array_size(list), 7);
    cr_assert_eq(seq_at(list, 0), 1);
    assert_gapless(list);
    const char *kinds[] = {"agent_added", "delivered", "leased", "acked", "drained", "health"};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        cr_assert(has_event(list, kinds[i], NULL), "no %s event", kinds[i]);
    for (size_t i = 0; i < json_array_size(list); i++)
        cr_assert_null(json_object_get(json_array_get(list, i), "payload"), "a payload in events");
    json_decref(list);
}

BUS_TEST(events, a_reader_at_the_end_sees_new_lines_and_poll_wakes_it)
{
    bus_agents(&bus, "alice", "bob", NULL);
    int fd = open(AT("events"), O_RDONLY);
    cr_assert_geq(fd, 0, "open events: %s", strerror(errno));
    char buf[65536];
    while (read(fd, buf, sizeof buf) > 0)
        ;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    cr_assert_eq(poll(&p, 1, 0), 0, "poll says readable at the end of the log");
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        usleep(300 * 1000);
        int o = open(AT("agents/alice/outbox/bob"), O_WRONLY | O_CREAT, 0644);
        _exit(o >= 0 && write(o, "hi", 2) == 2 && close(o) == 0 ? 0 : 1);
    }
    int n = poll(&p, 1, BUS_WAIT_MS);
    cr_assert_eq(n, 1, "poll did not wake when an event arrived");
    cr_assert(p.revents & POLLIN);
    cr_assert_eq(bus_wait_child(pid, BUS_WAIT_MS), 0);
    ssize_t got = read(fd, buf, sizeof buf - 1);
    cr_assert_gt(got, 0, "the reader at the end read nothing new");
    buf[got] = '\0';
    cr_assert(strstr(buf, "\"event\":\"delivered\""), "%s", buf);
    close(fd);
}

BUS_TEST(events, seq_goes_on_across_a_restart_and_a_kill_9)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "one");
    bus_terminate(&bus);
    bus_launch(&bus, NULL);
    bus_send("alice", "bob", "two");
    bus_kill9(&bus);
    bus_launch(&bus, NULL);
    bus_send("alice", "bob", "three");
    json_t *list = events_now();
    cr_assert_eq(json_array_size(list), 5, "2 agents and 3 deliveries, got %zu",
                 json_array_size(list));
    cr_assert_eq(seq_at(list, 0), 1);
    assert_gapless(list);
    json_decref(list);
}

/*
 * test_outbox.c — SPEC §3: sending by creating agents/A/outbox/B, the
 * envelope, payload kinds, inbox naming and order, sequences, broadcast.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *payload_str(json_t *list, size_t i)
{
    return bus_str(json_array_get(list, i), "payload");
}

BUS_TEST(outbox, echo_to_outbox_delivers_exactly_one_envelope)
{
    bus_agents(&bus, "alice", "bob", NULL);
    struct bus_cmd r;
    int status = bus_sh(&bus, &r, "echo 'build finished' > agents/alice/outbox/bob");
    cr_assert_eq(status, 0, "echo to outbox/bob: status %d: %s", status, r.err);
    bus_cmd_free(&r);

    json_t *in = bus_inbox("bob"); /* names, one object + newline, formats */
    cr_assert_eq(json_array_size(in), 1, "bob's inbox holds %zu files, want 1",
                 json_array_size(in));
    json_t *env = json_array_get(in, 0);
    bus_assert_keys(env, "version", "msg_id", "from", "to", "timestamp", "sequence", "type",
                    "payload", "requires_ack", "priority", NULL);
    bus_assert_envelope(env, "alice", "bob");
    cr_assert_eq(bus_int(env, "sequence"), 1);
    cr_assert_str_eq(bus_str(env, "type"), "message");
    cr_assert_str_eq(bus_str(env, "payload"), "build finished");
    cr_assert(json_is_false(json_object_get(env, "requires_ack")));
    cr_assert_str_eq(bus_str(env, "priority"), "normal");
    json_decref(in);
    cr_assert_eq(bus_count(AT("agents/alice/inbox")), 0, "the sender got a copy");
}

BUS_TEST(outbox, text_payload_loses_exactly_one_trailing_newline)
{
    bus_agents(&bus, "alice", "bob", NULL);
    cr_assert_eq(bus_sh(&bus, NULL, "printf 'two lines\\n\\n' > agents/alice/outbox/bob"), 0);
    cr_assert_eq(bus_sh(&bus, NULL, "printf 'no newline' > agents/alice/outbox/bob"), 0);
    cr_assert_eq(bus_sh(&bus, NULL, "printf 'caf\\303\\251 ok\\n' > agents/alice/outbox/bob"), 0);
    cr_assert_eq(bus_sh(&bus, NULL, "echo '{not json' > agents/alice/outbox/bob"), 0);
    json_t *in = bus_inbox("bob");
    cr_assert_eq(json_array_size(in), 4);
    cr_assert_str_eq(payload_str(in, 0), "two lines\n");
    cr_assert_str_eq(payload_str(in, 1), "no newline");
    cr_assert_str_eq(payload_str(in, 2), "caf\xc3\xa9 ok");
    cr_assert_str_eq(payload_str(in, 3), "{not json");
    for (size_t i = 0; i < 4; i++)
        cr_assert_null(json_object_get(json_array_get(in, i), "encoding"),
                       "a text payload carries an encoding");
    json_decref(in);
}

BUS_TEST(outbox, json_payload_is_kept_byte_for_byte)
{
    bus_agents(&bus, "alice", "bob", NULL);
    const char *exact = "{\"a\":0.1,\"b\":18446744073709551615}";
    cr_assert_eq(bus_sh(&bus, NULL, "echo '%s' > agents/alice/outbox/bob", exact), 0);
    cr_assert_eq(bus_sh(&bus, NULL, "echo '[1, 2,  \"x\"]' > agents/alice/outbox/bob"), 0);
    cr_assert_eq(bus_sh(&bus, NULL, "echo 42 > agents/alice/outbox/bob"), 0);
    cr_assert_eq(bus_sh(&bus, NULL, "echo '\"quoted\"' > agents/alice/outbox/bob"), 0);

    size_t n;
    char **names = bus_ls(AT("agents/bob/inbox"), &n);
    cr_assert(names && n == 4, "bob's inbox holds %zu files, want 4", n);
    char *raw = bus_read_ok(AT("agents/bob/inbox/%s", names[0]), NULL);
    cr_assert(strstr(raw, exact), "the JSON payload was re-serialised: %s", raw);
    json_error_t e;
    json_t *env = json_loads(raw, JSON_DECODE_INT_AS_REAL | JSON_REJECT_DUPLICATES, &e);
    cr_assert(env, "envelope does not parse: %s: %s", e.text, raw);
    json_t *payload = json_object_get(env, "payload");
    cr_assert(json_is_object(payload) && json_object_get(payload, "b"),
              "the payload is not the JSON object: %s", raw);
    cr_assert_null(json_object_get(env, "encoding"));
    json_decref(env);
    free(raw);

    raw = bus_read_ok(AT("agents/bob/inbox/%s", names[1]), NULL);
    cr_assert(strstr(raw, "[1, 2,  \"x\"]"), "the JSON array was re-serialised: %s", raw);
    free(raw);
    /* jansson cannot hold 2^64-1 as an integer: consume it before bus_inbox. */
    cr_assert(unlink(AT("agents/bob/inbox/%s", names[0])) == 0, "rm: %s", strerror(errno));
    bus_ls_free(names, n);

    json_t *in = bus_inbox("bob");
    cr_assert_eq(json_array_size(in), 3);
    json_t *num = json_object_get(json_array_get(in, 1), "payload");
    cr_assert(json_is_integer(num) && json_integer_value(num) == 42,
              "`echo 42` did not give the JSON number 42");
    cr_assert_str_eq(payload_str(in, 2), "quoted", "a JSON string body is that string");
    json_decref(in);
}

BUS_TEST(outbox, binary_payload_is_base64_with_an_encoding_field)
{
    bus_agents(&bus, "alice", "bob", NULL);
    const char bytes[] = {'\xff', '\xfe', '\0', '\x01'};
    enum bus_step step;
    int err = bus_write_ex(AT("agents/alice/outbox/bob"), O_WRONLY | O_CREAT | O_TRUNC, bytes,
                           sizeof bytes, &step);
    cr_assert_eq(err, 0, "binary send failed at step %d: %s", (int)step, strerror(err));
    json_t *in = bus_inbox("bob");
    cr_assert_eq(json_array_size(in), 1);
    json_t *env = json_array_get(in, 0);
    bus_assert_keys(env, "version", "msg_id", "from", "to", "timestamp", "sequence", "type",
                    "payload", "requires_ack", "priority", "encoding", NULL);
    cr_assert_str_eq(bus_str(env, "encoding"), "base64");
    cr_assert_str_eq(bus_str(env, "payload"), "//4AAQ==");
    json_decref(in);
}

BUS_TEST(outbox, outbox_name_never_exists_even_while_being_written)
{
    bus_agents(&bus, "alice", "bob", NULL);
    struct stat st;
    cr_assert_eq(bus_sh(&bus, NULL, "test -e agents/alice/outbox/bob"), 1,
                 "test -e outbox/bob succeeds before any write");

    struct bus_writer w;
    cr_assert_eq(bus_writer_open(&w, AT("agents/alice/outbox/bob"), O_WRONLY | O_CREAT | O_TRUNC),
                 0);
    cr_assert_eq(bus_writer_write(&w, "half", 4), 0);
    errno = 0;
    cr_assert(stat(AT("agents/alice/outbox/bob"), &st) < 0 && errno == ENOENT,
              "stat of outbox/bob while it is written gave %s, want ENOENT", strerror(errno));
    cr_assert_eq(bus_sh(&bus, NULL, "test -e agents/alice/outbox/bob"), 1,
                 "test -e outbox/bob succeeds while it is being written");
    size_t n;
    char **names = bus_ls(AT("agents/alice/outbox"), &n);
    cr_assert(names);
    for (size_t i = 0; i < n; i++)
        cr_assert_str_neq(names[i], "bob", "ls outbox lists bob");
    bus_ls_free(names, n);
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 0, "delivered before close");

    cr_assert_eq(bus_writer_write(&w, " done\n", 6), 0);
    cr_assert_eq(bus_writer_close(&w), 0);
    errno = 0;
    cr_assert(stat(AT("agents/alice/outbox/bob"), &st) < 0 && errno == ENOENT,
              "stat of outbox/bob after the send gave %s", strerror(errno));
    json_t *in = bus_inbox("bob");
    cr_assert_eq(json_array_size(in), 1);
    cr_assert_str_eq(payload_str(in, 0), "half done");
    json_decref(in);
}

BUS_TEST(outbox, messages_written_at_once_by_one_sender_are_files_of_their_own)
{
    /* The kernel lets one WRITE at a time into one inode: a sender's messages being
     * written side by side are inodes of their own, so none waits for another. */
    bus_agents(&bus, "alice", "bob", "carol", NULL);
    int fd[3];
    struct stat st[3];
    const char *to[3] = {"agents/alice/outbox/bob", "agents/alice/outbox/bob",
                         "agents/alice/outbox/carol"};
    for (int i = 0; i < 3; i++) {
        fd[i] = open(AT("%s", to[i]), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        cr_assert_geq(fd[i], 0, "open %s: %s", to[i], strerror(errno));
        cr_assert_eq(fstat(fd[i], &st[i]), 0);
        cr_assert(S_ISREG(st[i].st_mode));
        cr_assert_eq(st[i].st_mode & 0777, 0200);
        cr_assert_eq(st[i].st_size, 0);
    }
    cr_assert_neq(st[0].st_ino, st[1].st_ino, "two messages to bob share an inode");
    cr_assert_neq(st[1].st_ino, st[2].st_ino, "messages to bob and carol share an inode");
    for (int i = 2; i >= 0; i--) {
        char body[16];
        int len = snprintf(body, sizeof body, "m%d\n", i);
        cr_assert_eq(write(fd[i], body, (size_t)len), len);
        cr_assert_eq(close(fd[i]), 0);
    }
    json_t *in = bus_inbox("bob");
    cr_assert_eq(json_array_size(in), 2);
    cr_assert_str_eq(payload_str(in, 0), "m1");
    cr_assert_str_eq(payload_str(in, 1), "m0");
    json_decref(in);
    cr_assert_eq(bus_count(AT("agents/carol/inbox")), 1);
}

BUS_TEST(outbox, noclobber_shell_can_send)
{
    bus_agents(&bus, "alice", "bob", NULL);
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r,
                        "set -C; echo once > agents/alice/outbox/bob && "
                        "echo twice > agents/alice/outbox/bob"),
                 0, "set -C refused a send: %s", r.err);
    bus_cmd_free(&r);
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 2);
}

BUS_TEST(outbox, a_pair_name_looked_up_and_sent_to_never_exists)
{
    /* The kernel may remember that outbox/bob is not there (a negative entry): probes,
     * sends, O_EXCL and noclobber must all still agree with ls. */
    bus_agents(&bus, "alice", "bob", NULL);
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r,
                        "cd agents/alice/outbox; for i in 1 2 3; do [ -e bob ] && exit 1; "
                        "stat bob 2>/dev/null && exit 2; echo $i > bob || exit 3; done; "
                        "set -C; echo 4 > bob || exit 4; [ -e bob ] && exit 5; "
                        "ls | grep -qx bob && exit 6; exit 0"),
                 0, "%s", r.err);
    bus_cmd_free(&r);
    int fd = open(AT("agents/alice/outbox/bob"), O_WRONLY | O_CREAT | O_EXCL, 0644);
    cr_assert_geq(fd, 0, "O_EXCL of outbox/bob: %s", strerror(errno));
    cr_assert_eq(write(fd, "5\n", 2), 2);
    cr_assert_eq(close(fd), 0);
    errno = 0;
    cr_assert(open(AT("agents/alice/outbox/bob"), O_RDONLY) < 0 && errno == ENOENT,
              "opening outbox/bob to read: %s", strerror(errno));
    json_t *in = bus_inbox("bob");
    cr_assert_eq(json_array_size(in), 5);
    for (size_t i = 0; i < 5; i++)
        cr_assert_eq(bus_int(json_array_get(in, i), "payload"), (json_int_t)i + 1);
    json_decref(in);
}

BUS_TEST(outbox, sequences_count_per_pair_without_gaps_and_msg_ids_are_unique)
{
    bus_agents(&bus, "alice", "bob", "carol", NULL);
    for (int i = 0; i < 3; i++)
        bus_send("alice", "bob", "ab");
    for (int i = 0; i < 2; i++)
        bus_send("alice", "carol", "ac");
    bus_send("bob", "alice", "ba");
    bus_send("carol", "bob", "cb");
    bus_send("alice", "bob", "ab");

    json_t *bob = bus_inbox("bob"), *carol = bus_inbox("carol"), *alice = bus_inbox("alice");
    json_int_t ab = 0, cb = 0;
    for (size_t i = 0; i < json_array_size(bob); i++) {
        json_t *env = json_array_get(bob, i);
        json_int_t want = strcmp(bus_str(env, "from"), "alice") == 0 ? ++ab : ++cb;
        cr_assert_eq(bus_int(env, "sequence"), want, "bob's message %zu from %s has sequence %d", i,
                     bus_str(env, "from"), (int)bus_int(env, "sequence"));
    }
    cr_assert(ab == 4 && cb == 1);
    cr_assert_eq(bus_int(json_array_get(carol, 0), "sequence"), 1);
    cr_assert_eq(bus_int(json_array_get(carol, 1), "sequence"), 2);
    cr_assert_eq(bus_int(json_array_get(alice, 0), "sequence"), 1);

    /* MSG-YYYYMMDD-HHMMSS-<store id>-<counter>: one store id, a growing counter. */
    for (size_t i = 1; i < json_array_size(bob); i++) {
        const char *prev = bus_str(json_array_get(bob, i - 1), "msg_id");
        const char *id = bus_str(json_array_get(bob, i), "msg_id");
        cr_assert(strncmp(prev + 20, id + 20, 8) == 0, "two store ids: %s, %s", prev, id);
        cr_assert(strcmp(prev + 29, id + 29) < 0, "the counter does not grow: %s then %s", prev,
                  id);
    }

    json_t *all = json_array();
    json_array_extend(all, bob);
    json_array_extend(all, carol);
    json_array_extend(all, alice);
    cr_assert_eq(json_array_size(all), 8);
    for (size_t i = 0; i < 8; i++)
        for (size_t j = i + 1; j < 8; j++)
            cr_assert_str_neq(bus_str(json_array_get(all, i), "msg_id"),
                              bus_str(json_array_get(all, j), "msg_id"), "duplicate msg_id");
    json_decref(all);
    json_decref(bob);
    json_decref(carol);
    json_decref(alice);
}

BUS_TEST(outbox, ls_inbox_lists_oldest_first)
{
    bus_agents(&bus, "alice", "bob", "carol", NULL);
    bus_send("alice", "bob", "first");
    bus_send("carol", "bob", "second");
    bus_send("alice", "bob", "third");
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "cat \"agents/bob/inbox/$(ls agents/bob/inbox | head -1)\""), 0,
                 "%s", r.err);
    json_error_t e;
    json_t *env = json_loads(r.out, 0, &e);
    cr_assert(env, "cat of the head of ls: %s: %s", e.text, r.out);
    cr_assert_str_eq(bus_str(env, "payload"), "first", "ls | head -1 is not the oldest");
    json_decref(env);
    bus_cmd_free(&r);

    json_t *in = bus_inbox("bob");
    cr_assert_str_eq(payload_str(in, 0), "first");
    cr_assert_str_eq(payload_str(in, 1), "second");
    cr_assert_str_eq(payload_str(in, 2), "third");
    json_decref(in);

    /* After the oldest is consumed, the next one heads the list. */
    cr_assert_eq(bus_sh(&bus, NULL, "rm \"agents/bob/inbox/$(ls agents/bob/inbox | head -1)\""), 0);
    in = bus_inbox("bob");
    cr_assert_eq(json_array_size(in), 2);
    cr_assert_str_eq(payload_str(in, 0), "second");
    json_decref(in);
}

BUS_TEST(outbox, an_agent_finds_its_file_by_msg_id)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "find me");
    json_t *in = bus_inbox("bob");
    const char *id = bus_str(json_array_get(in, 0), "msg_id");
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "cat agents/bob/inbox/*-%s.json", id), 0, "%s", r.err);
    cr_assert(strstr(r.out, "find me"), "glob by msg_id found: %s", r.out);
    bus_cmd_free(&r);
    json_decref(in);
}

BUS_TEST(outbox, rm_of_an_inbox_file_consumes_the_message)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "one");
    bus_send("alice", "bob", "two");
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "rm agents/bob/inbox/*"), 0, "rm: %s", r.err);
    bus_cmd_free(&r);
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 0);
    cr_assert_eq(bus_count(AT("agents/alice/inbox")), 0, "an ack was sent without requires_ack");
}

BUS_TEST(outbox, empty_close_sends_nothing)
{
    bus_agents(&bus, "alice", "bob", NULL);
    cr_assert_eq(bus_sh(&bus, NULL, ": > agents/alice/outbox/bob"), 0);
    cr_assert_eq(bus_write(AT("agents/alice/outbox/bob"), ""), 0);
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 0, "an empty close sent a message");
}

BUS_TEST(outbox, each_close_with_pending_bytes_sends_one_message)
{
    bus_agents(&bus, "alice", "bob", NULL);
    cr_assert_eq(bus_sh(&bus, NULL, "{ date; echo a; } > agents/alice/outbox/bob"), 0);
    json_t *in = bus_inbox("bob");
    cr_assert_eq(json_array_size(in), 2, "{ date; echo a; } sent %zu messages, want 2",
                 json_array_size(in));
    cr_assert_str_eq(payload_str(in, 1), "a");
    json_decref(in);
}

BUS_TEST(outbox, send_to_an_unknown_agent_fails_with_enoent)
{
    bus_agents(&bus, "alice", NULL);
    size_t top = bus_jsonl_count(AT("errors"));
    size_t mine = bus_jsonl_count(AT("agents/alice/errors"));
    cr_assert_neq(bus_sh(&bus, NULL, "echo hi > agents/alice/outbox/nobody"), 0);
    enum bus_step step;
    int err = bus_write_ex(AT("agents/alice/outbox/nobody"), O_WRONLY | O_CREAT | O_TRUNC, "hi", 2,
                           &step);
    cr_assert(err == ENOENT && step == BUS_STEP_OPEN,
              "send to nobody: %s at step %d, want ENOENT at open", strerror(err), (int)step);
    bus_assert_logged(AT("errors"), top, "send to an unknown agent");
    bus_assert_logged(AT("agents/alice/errors"), mine, "send to an unknown agent");
}

BUS_TEST(outbox, broadcast_reaches_every_other_agent_with_its_own_msg_id)
{
    bus_agents(&bus, "alice", "bob", "carol", NULL);
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "echo 'hello everyone' > agents/alice/outbox/all"), 0, "%s",
                 r.err);
    bus_cmd_free(&r);
    json_t *bob = bus_inbox("bob"), *carol = bus_inbox("carol");
    cr_assert_eq(json_array_size(bob), 1);
    cr_assert_eq(json_array_size(carol), 1);
    json_t *b = json_array_get(bob, 0), *c = json_array_get(carol, 0);
    bus_assert_envelope(b, "alice", "bob");
    bus_assert_envelope(c, "alice", "carol");
    cr_assert_str_eq(bus_str(b, "payload"), "hello everyone");
    cr_assert_str_eq(bus_str(c, "payload"), "hello everyone");
    cr_assert_str_neq(bus_str(b, "msg_id"), bus_str(c, "msg_id"), "one msg_id for two copies");
    cr_assert_eq(bus_int(b, "sequence"), 1);
    cr_assert_eq(bus_int(c, "sequence"), 1);
    cr_assert_eq(bus_count(AT("agents/alice/inbox")), 0, "the sender got its own broadcast");
    json_decref(bob);
    json_decref(carol);
}

BUS_TEST(outbox, broadcast_without_other_agents_fails_with_enoent)
{
    bus_agents(&bus, "alice", NULL);
    size_t top = bus_jsonl_count(AT("errors"));
    cr_assert_neq(bus_sh(&bus, NULL, "echo hi > agents/alice/outbox/all"), 0,
                  "a broadcast to nobody succeeded");
    enum bus_step step;
    int err =
        bus_write_ex(AT("agents/alice/outbox/all"), O_WRONLY | O_CREAT | O_TRUNC, "hi", 2, &step);
    cr_assert(err == ENOENT && step == BUS_STEP_OPEN,
              "broadcast to nobody: %s at step %d, want ENOENT at open", strerror(err), (int)step);
    bus_assert_logged(AT("errors"), top, "broadcast to nobody");
    cr_assert_eq(bus_count(AT("agents/alice/inbox")), 0);
}

BUS_TEST(outbox, outbox_lists_sent_messages_as_envelopes)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "one");
    bus_send("alice", "bob", "two");
    json_t *in = bus_inbox("bob");
    json_t *out = bus_outbox("alice"); /* names, formats, from = alice */
    cr_assert_eq(json_array_size(out), 2, "alice's outbox lists %zu files, want 2",
                 json_array_size(out));
    for (size_t i = 0; i < 2; i++)
        cr_assert(json_equal(json_array_get(in, i), json_array_get(out, i)),
                  "outbox envelope %zu differs from the delivered one", i);
    /* Consuming does not remove them from the sender's outbox. */
    cr_assert_eq(bus_sh(&bus, NULL, "rm agents/bob/inbox/*"), 0);
    cr_assert_eq(bus_count(AT("agents/alice/outbox")), 2);
    json_decref(in);
    json_decref(out);
}

static void start_capacity_2000(void)
{
    bus_start(&bus, "--inbox-capacity", "2000", NULL);
}

BUS_TEST_WITH(outbox, outbox_lists_only_the_newest_1000, start_capacity_2000)
{
    bus_agents(&bus, "alice", "bob", NULL);
    for (int i = 0; i < 1003; i++) {
        char text[16];
        snprintf(text, sizeof text, "m%d", i);
        bus_send("alice", "bob", text);
    }
    json_t *out = bus_outbox("alice");
    cr_assert_eq(json_array_size(out), 1000, "alice's outbox lists %zu messages, want 1000",
                 json_array_size(out));
    cr_assert_str_eq(payload_str(out, 0), "m3", "the outbox does not keep the newest");
    cr_assert_str_eq(payload_str(out, 999), "m1002");
    json_decref(out);
}

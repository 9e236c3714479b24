/*
 * test_damage.c — a damaged store is refused, reported and salvaged; a non-regular
 * file where the store expects a file is refused at once (SPEC §11 "Store damage").
 *
 * The one thing to know: kill -9 leaves the records in the journal (a clean stop
 * compacts them into the snapshot), so each test kills the server, damages the file,
 * then runs busfs on the store the way a user would.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"

#define HEADER_SIZE 16
#define FRAME_SIZE 8

static char *store_path(const char *name)
{
    static char p[4][PATH_MAX + 64];
    static int i;
    char *out = p[i++ % 4];
    snprintf(out, PATH_MAX + 64, "%s/%s", bus.store, name);
    return out;
}

/* busfs ARGS... on the fixture's store, at most 10 s; the status, output in *r. */
static int busfs_on_store(struct bus_cmd *r, const char *a1, const char *a2)
{
    char *argv[] = {(char *)bus_bin(), (char *)a1, "--store", bus.store, (char *)a2, NULL};
    return bus_exec(NULL, argv, BUS_WAIT_MS, r);
}

/* Starting the server on the damaged store fails, naming what to run. */
static void assert_refused_to_start(const char *what)
{
    struct bus_cmd r;
    int status = busfs_on_store(&r, "-f", bus.mnt);
    cr_assert(status > 0, "busfs started on a store with %s: status %d", what, status);
    cr_assert(strstr(r.err, what), "the reason names %s: %s", what, r.err);
    cr_assert_not(bus_is_mounted(bus.mnt), "nothing is left mounted");
    bus_cmd_free(&r);
}

/* Offset of frame n (0 first) of the journal. */
static long frame_at(int n)
{
    size_t len;
    char *j = bus_read(store_path("journal"), &len);
    cr_assert(j, "the journal is readable");
    size_t off = HEADER_SIZE;
    for (int i = 0; i < n; i++) {
        uint32_t rlen;
        cr_assert_leq(off + FRAME_SIZE, len, "the journal has frame %d", n);
        memcpy(&rlen, j + off, 4);
        off += FRAME_SIZE + rlen;
    }
    cr_assert_lt(off + FRAME_SIZE, len, "the journal has frame %d", n);
    free(j);
    return (long)off;
}

static long frame_count(void)
{
    size_t len;
    char *j = bus_read(store_path("journal"), &len);
    long n = 0;
    for (size_t off = HEADER_SIZE; off + FRAME_SIZE <= len; n++) {
        uint32_t rlen;
        memcpy(&rlen, j + off, 4);
        off += FRAME_SIZE + rlen;
    }
    free(j);
    return n;
}

static void flip(const char *path, long at, unsigned char mask)
{
    int fd = open(path, O_RDWR);
    cr_assert_geq(fd, 0);
    unsigned char c;
    cr_assert_eq(pread(fd, &c, 1, at), 1);
    c ^= mask;
    cr_assert_eq(pwrite(fd, &c, 1, at), 1);
    close(fd);
}

/* Four messages alice -> bob, then kill -9: they are all in the journal. */
static void four_messages_then_kill(void)
{
    bus_agents(&bus, "alice", "bob", NULL);
    for (int i = 1; i <= 4; i++) {
        char text[32];
        snprintf(text, sizeof text, "m%d", i);
        bus_send("alice", "bob", text);
    }
    bus_kill9(&bus);
}

BUS_TEST(damage, a_flipped_length_mid_journal_is_refused_checked_and_salvaged)
{
    four_messages_then_kill();
    long n = frame_count();
    long at = frame_at((int)n - 2); /* the third message */
    flip(store_path("journal"), at + 1, 0x04);

    assert_refused_to_start("busfs --salvage --store");

    struct bus_cmd r;
    int status = busfs_on_store(&r, "--check", NULL);
    cr_assert_eq(status, 2, "--check on a damaged journal: status %d: %s%s", status, r.out, r.err);
    char want[64];
    snprintf(want, sizeof want, "byte %ld", at);
    cr_assert(strstr(r.err, want), "--check names the offset (%s): %s", want, r.err);
    cr_assert(strstr(r.err, "1 intact record(s) follow"), "and the records after: %s", r.err);
    bus_cmd_free(&r);

    status = busfs_on_store(&r, "--salvage", NULL);
    cr_assert_eq(status, 0, "--salvage: status %d: %s%s", status, r.out, r.err);
    cr_assert(strstr(r.out, "damaged-"), "it says where the damaged files went: %s", r.out);
    cr_assert(strstr(r.out, "lost: journal bytes"), "and what was lost: %s", r.out);
    bus_cmd_free(&r);

    status = busfs_on_store(&r, "--check", NULL);
    cr_assert_eq(status, 0, "--check after salvage: status %d: %s%s", status, r.out, r.err);
    bus_cmd_free(&r);

    bus_launch(&bus, NULL);
    cr_assert_eq(bus_count(bus_path(&bus, "agents/bob/inbox")), 3,
                 "the three intact messages are kept");
}

/* The length DIR/mark last recorded for the journal (0 when none yet). */
static long long marked_length(void)
{
    size_t len = 0;
    char *m = bus_read(store_path("mark"), &len);
    long long n = 0;
    if (m && len == 20)
        for (int i = 15; i >= 8; i--)
            n = n << 8 | (unsigned char)m[i];
    free(m);
    return n;
}

BUS_TEST(damage, a_journal_cut_short_of_what_the_store_recorded_is_damage)
{
    /* Whole records missing from the end look like a clean journal; the store's mark
     * (written every second) tells them from a torn final record. */
    bus_agents(&bus, "alice", "bob", NULL);
    for (int i = 1; i <= 6; i++) {
        char text[32];
        snprintf(text, sizeof text, "m%d", i);
        bus_send("alice", "bob", text);
    }
    long long journal = 0;
    long long end = bus_now_ms() + BUS_WAIT_MS;
    while (bus_now_ms() < end) {
        struct stat st;
        journal = stat(store_path("journal"), &st) == 0 ? (long long)st.st_size : 0;
        if (journal > 0 && marked_length() == journal)
            break;
        usleep(50 * 1000);
    }
    cr_assert_eq(marked_length(), journal, "the store never recorded the journal's length");
    bus_kill9(&bus);
    long cut = frame_at((int)frame_count() - 2); /* the last two records go, whole */
    cr_assert_eq(truncate(store_path("journal"), cut), 0);

    struct bus_cmd r;
    int status = busfs_on_store(&r, "--check", NULL);
    cr_assert_eq(status, 2, "--check on a journal cut short: status %d: %s%s", status, r.out,
                 r.err);
    cr_assert(strstr(r.err, "acknowledged records are missing"), "%s", r.err);
    bus_cmd_free(&r);
    assert_refused_to_start("busfs --salvage --store");
    status = busfs_on_store(&r, "--salvage", NULL);
    cr_assert_eq(status, 0, "--salvage: status %d: %s%s", status, r.out, r.err);
    bus_cmd_free(&r);
    bus_launch(&bus, NULL);
    cr_assert_eq(bus_count(bus_path(&bus, "agents/bob/inbox")), 4, "the intact messages are kept");
}

/* The msg_id of bob's oldest message, or "" (the bus must be running). */
static void first_msg_id(char *out, size_t n)
{
    json_t *in = bus_inbox("bob");
    snprintf(out, n, "%s", json_array_size(in) ? bus_str(json_array_get(in, 0), "msg_id") : "");
    json_decref(in);
}

BUS_TEST(damage, a_zero_byte_journal_is_damage_not_an_empty_bus)
{
    four_messages_then_kill();
    bus_launch(&bus, NULL);
    char before[64];
    first_msg_id(before, sizeof before);
    cr_assert(before[0], "no message before the damage");
    bus_kill9(&bus);
    cr_assert_eq(truncate(store_path("journal"), 0), 0);
    assert_refused_to_start("busfs --salvage --store");
    struct bus_cmd r;
    int status = busfs_on_store(&r, "--check", NULL);
    cr_assert_eq(status, 2, "--check on a 0-byte journal: status %d: %s%s", status, r.out, r.err);
    bus_cmd_free(&r);
    status = busfs_on_store(&r, "--salvage", NULL);
    cr_assert_eq(status, 0, "--salvage: status %d: %s%s", status, r.out, r.err);
    cr_assert(strstr(r.out, "new store id"), "the salvage says the store id changed: %s", r.out);
    bus_cmd_free(&r);
    bus_launch(&bus, NULL);
    /* The counter restarts with what was kept; a new store id keeps msg_ids unique. */
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "after the salvage");
    char after[64];
    first_msg_id(after, sizeof after);
    cr_assert(after[0] && strcmp(after, before) != 0, "a msg_id was used twice: %s", after);
    /* MSG-YYYYMMDD-HHMMSS-<store id>-<counter>: the counter repeats, the id does not. */
    cr_assert_str_eq(after + 29, before + 29, "the counter restarts at the same number");
    cr_assert(strncmp(after + 20, before + 20, 8) != 0, "the store id in %s did not change (%s)",
              after, before);
}

BUS_TEST(damage, a_flipped_generation_in_the_journal_header_is_damage)
{
    four_messages_then_kill();
    flip(store_path("journal"), 8, 0x01);
    assert_refused_to_start("header");
    struct bus_cmd r;
    int status = busfs_on_store(&r, "--check", NULL);
    cr_assert_eq(status, 2, "--check: status %d: %s%s", status, r.out, r.err);
    bus_cmd_free(&r);
    status = busfs_on_store(&r, "--salvage", NULL);
    cr_assert_eq(status, 0, "--salvage: status %d: %s%s", status, r.out, r.err);
    bus_cmd_free(&r);
    bus_launch(&bus, NULL);
    cr_assert_eq(bus_count(bus_path(&bus, "agents/bob/inbox")), 4, "every message is kept");
}

BUS_TEST(damage, a_torn_final_record_is_still_cut_silently)
{
    four_messages_then_kill();
    struct stat sb;
    cr_assert_eq(stat(store_path("journal"), &sb), 0);
    cr_assert_eq(truncate(store_path("journal"), sb.st_size - 3), 0);
    struct bus_cmd r;
    int status = busfs_on_store(&r, "--check", NULL);
    cr_assert_eq(status, 0, "--check on a torn tail: status %d: %s%s", status, r.out, r.err);
    bus_cmd_free(&r);
    bus_launch(&bus, NULL);
    cr_assert_eq(bus_count(bus_path(&bus, "agents/bob/inbox")), 3);
}

/* A FIFO in place of each store file: refused at once, naming it (a plain open of a
 * FIFO would wait forever for a writer). */
BUS_TEST(damage, a_fifo_in_place_of_a_store_file_is_refused_naming_it)
{
    static const char *const names[] = {"journal", "format", "snapshot", "lock"};
    bus_agents(&bus, "alice", NULL);
    bus_terminate(&bus);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char saved[PATH_MAX + 80];
        snprintf(saved, sizeof saved, "%s.saved", store_path(names[i]));
        cr_assert_eq(rename(store_path(names[i]), saved), 0, "%s", names[i]);
        cr_assert_eq(mkfifo(store_path(names[i]), 0600), 0);
        long long t0 = bus_now_ms();
        assert_refused_to_start(store_path(names[i]));
        struct bus_cmd r;
        int status = busfs_on_store(&r, "--check", NULL);
        cr_assert_eq(status, 2, "--check with a FIFO %s: %d: %s%s", names[i], status, r.out,
                     r.err);
        cr_assert(strstr(r.err, "a FIFO"), "%s", r.err);
        bus_cmd_free(&r);
        cr_assert_lt(bus_now_ms() - t0, 5000, "refused at once, not after a wait");
        cr_assert_eq(unlink(store_path(names[i])), 0);
        cr_assert_eq(rename(saved, store_path(names[i])), 0);
    }
    bus_launch(&bus, NULL);
}

BUS_TEST(damage, a_fifo_as_a_metrics_segment_is_refused)
{
    bus_agents(&bus, "alice", NULL);
    bus_terminate(&bus);
    char seg[PATH_MAX + 80];
    snprintf(seg, sizeof seg, "%s/metrics/points-00000000009999999999.jsonl", bus.store);
    cr_assert_eq(mkfifo(seg, 0600), 0);
    assert_refused_to_start("a FIFO");
    struct bus_cmd r;
    int status = busfs_on_store(&r, "--check", NULL);
    cr_assert_eq(status, 2, "--check with a FIFO segment: %d: %s%s", status, r.out, r.err);
    cr_assert(strstr(r.err, "a FIFO"), "%s", r.err);
    bus_cmd_free(&r);
    cr_assert_eq(unlink(seg), 0);
    bus_launch(&bus, NULL);
}

/* ---------- a full store filesystem ---------- */

#include <sys/mount.h>

static char small_fs[PATH_MAX - 16];

/* The store on its own 8 MiB tmpfs (root only), so another process can fill it. */
static void small_store_setup(void)
{
    bus_require_fuse();
    if (geteuid() != 0) {
        cr_assert(!getenv("CI") || strcmp(getenv("CI"), "true") != 0,
                  "a full-store test needs root to mount a small tmpfs, and CI must run it");
        cr_skip_test("needs root to mount a small tmpfs as the store");
    }
    bus_prepare(&bus);
    cr_assert_lt(strlen(bus.dir), sizeof small_fs - 8);
    snprintf(small_fs, sizeof small_fs, "%.*s/fs", (int)(sizeof small_fs - 8), bus.dir);
    cr_assert_eq(mkdir(small_fs, 0700), 0);
    cr_assert_eq(mount("tmpfs", small_fs, "tmpfs", 0, "size=8m,mode=0700"), 0, "mount tmpfs: %s",
                 strerror(errno));
    snprintf(bus.store, sizeof bus.store, "%.*s/store", (int)(sizeof small_fs - 8), small_fs);
    cr_assert_eq(mkdir(bus.store, 0700), 0);
    /* An explicit limit: the default is half the space free at start, 0 on a full one. */
    bus_launch(&bus, (const char *const[]){"--inbox-capacity", "100000", "--store-max-bytes", "6M",
                                           NULL});
}

static void small_store_teardown(void)
{
    if (bus.pid)
        bus_kill9(&bus);
    if (small_fs[0])
        umount2(small_fs, MNT_DETACH);
    bus_teardown();
}

/* bash -c CMD in the mount dir (bash names the errno of a failed write; dash does not). */
static int bash_in_mnt(struct bus_cmd *r, const char *cmd)
{
    char *argv[] = {"bash", "-c", (char *)cmd, NULL};
    return bus_exec(bus.mnt, argv, 30000, r);
}

static long inbox_count(const char *agent)
{
    return bus_count(bus_path(&bus, "agents/%s/inbox", agent));
}

Test(damage, a_full_store_filesystem_fails_the_write_not_the_close,
     .init = small_store_setup, .fini = small_store_teardown, .timeout = BUS_TEST_TIMEOUT)
{
    bus_agents(&bus, "alice", "bob", NULL);
    struct bus_cmd r;
    bus_sh(&bus, NULL, "dd if=/dev/zero of=%s/fill bs=64k 2>/dev/null; true", small_fs);
    /* The journal may still have space allocated ahead; sending uses it up, then a
     * write must fail with ENOSPC, and every send that succeeded is delivered. */
    int status = bash_in_mnt(&r, "i=0; while [ $i -lt 20000 ] && echo x > agents/alice/outbox/bob;"
                             " do i=$((i+1)); done; echo $i");
    long sent = strtol(r.out, NULL, 10);
    cr_assert_lt(sent, 20000, "sends never failed on a full filesystem: %s", r.err);
    cr_assert(strstr(r.err, "No space left on device"), "the write failed with ENOSPC: %s", r.err);
    cr_assert_eq(inbox_count("bob"), sent, "%ld sends succeeded, so many are delivered", sent);
    bus_cmd_free(&r);
    (void)status;

    status = bash_in_mnt(&r, "echo x > agents/alice/outbox/bob");
    cr_assert_neq(status, 0, "a send on the full store exits non-zero");
    cr_assert(strstr(r.err, "No space left on device"), "%s", r.err);
    bus_cmd_free(&r);
    cr_assert_eq(inbox_count("bob"), sent, "nothing more was delivered");

    /* Health and metrics writes on a full store: done, or refused with ENOSPC at
     * write; never another error, and the bus still answers. */
    status = bash_in_mnt(&r, "echo '{\"status\":\"healthy\"}' > agents/alice/health");
    cr_assert(status == 0 || strstr(r.err, "No space left on device"), "health: %d %s", status,
              r.err);
    bus_cmd_free(&r);
    status = bash_in_mnt(&r, "echo 'latency_ms 12' > agents/alice/metrics");
    cr_assert(status == 0 || strstr(r.err, "No space left on device"), "metrics: %d %s", status,
              r.err);
    bus_cmd_free(&r);
    cr_assert_eq(bus_sh(&bus, NULL, "ls agents/bob/inbox >/dev/null"), 0, "the bus still answers");

    /* A clean stop compacts; with no room for the snapshot the journal is kept whole. */
    bus_restart(&bus, "--inbox-capacity", "100000", "--store-max-bytes", "6M", NULL);
    cr_assert_eq(inbox_count("bob"), sent, "every message survives a stop on a full store");

    cr_assert_eq(bus_sh(&bus, NULL, "rm %s/fill", small_fs), 0);
    status = bus_sh(&bus, &r, "echo after > agents/alice/outbox/bob");
    cr_assert_eq(status, 0, "a send after space is freed: %s", r.err);
    bus_cmd_free(&r);
    cr_assert_eq(inbox_count("bob"), sent + 1);
    status = bash_in_mnt(&r, "echo '{\"status\":\"healthy\"}' > agents/alice/health && "
                             "echo 'latency_ms 12' > agents/alice/metrics");
    cr_assert_eq(status, 0, "health and metrics after space is freed: %s", r.err);
    bus_cmd_free(&r);
    bus_terminate(&bus);
    cr_assert_eq(umount2(small_fs, 0), 0, "umount: %s", strerror(errno));
    small_fs[0] = '\0';
    bus_stop(&bus);
}

/* The delivered events in `events`, after checking that seq goes up by one from line
 * to line. */
static long delivered_events_gapless(const char *when)
{
    json_t *list = bus_jsonl(bus_path(&bus, "events"));
    cr_assert_not_null(list, "%s: events is JSON lines", when);
    long delivered = 0;
    json_int_t prev = 0;
    for (size_t i = 0; i < json_array_size(list); i++) {
        json_t *ev = json_array_get(list, i);
        json_int_t seq = bus_int(ev, "seq");
        cr_assert(i == 0 || seq == prev + 1, "%s: seq %lld after %lld", when, (long long)seq,
                  (long long)prev);
        prev = seq;
        delivered += strcmp(bus_str(ev, "event"), "delivered") == 0;
    }
    json_decref(list);
    return delivered;
}

Test(damage, a_full_store_filesystem_delays_events_and_never_skips_one,
     .init = small_store_setup, .fini = small_store_teardown, .timeout = BUS_TEST_TIMEOUT)
{
    bus_agents(&bus, "alice", "bob", NULL);
    struct bus_cmd r;
    bus_sh(&bus, NULL, "dd if=/dev/zero of=%s/fill bs=64k 2>/dev/null; true", small_fs);
    /* Sends succeed on the journal's space allocated ahead, and then fail; the events
     * of those that succeeded may have found no room. */
    bash_in_mnt(&r, "i=0; while [ $i -lt 20000 ] && echo x > agents/alice/outbox/bob;"
                    " do i=$((i+1)); done; echo $i");
    long sent = strtol(r.out, NULL, 10);
    bus_cmd_free(&r);
    cr_assert_lt(sent, 20000, "sends never failed on a full filesystem");
    cr_assert_leq(delivered_events_gapless("on the full store"), sent);

    /* Once there is room, the held events are written, in order, before any new one. */
    cr_assert_eq(bus_sh(&bus, NULL, "rm %s/fill", small_fs), 0);
    cr_assert_eq(bus_sh(&bus, &r, "echo after > agents/alice/outbox/bob"), 0, "%s", r.err);
    bus_cmd_free(&r);
    cr_assert_eq(delivered_events_gapless("after space was freed"), sent + 1,
                 "one delivered event for each of the %ld + 1 sends", sent);
    bus_kill9(&bus);
    bus_launch(&bus, (const char *const[]){"--inbox-capacity", "100000", "--store-max-bytes", "6M",
                                           NULL});
    long after = delivered_events_gapless("after a kill -9");
    cr_assert_eq(after, sent + 1, "after a kill -9: %ld delivered events for %ld + 1 sends", after,
                 sent);
}

/*
 * test_sync.c — SPEC §13: with --sync a send returns only once its journal bytes are
 * on stable storage. The store lives on an ext4 filesystem of its own, on a loop
 * device over an image file: what the loop device has been given is in the image
 * file, and what ext4 still holds in its page cache is not. Right after a send
 * returns, its bytes must be in the image.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

/* Whether the image file holds these bytes. */
static bool image_holds(const char *image, const char *needle)
{
    int fd = open(image, O_RDONLY | O_CLOEXEC);
    cr_assert_geq(fd, 0, "%s: %s", image, strerror(errno));
    size_t nl = strlen(needle);
    static char block[1 << 20];
    size_t keep = 0;
    bool found = false;
    for (;;) {
        ssize_t n = read(fd, block + keep, sizeof block - keep);
        cr_assert_geq(n, 0, "read %s: %s", image, strerror(errno));
        if (n == 0)
            break;
        size_t have = keep + (size_t)n;
        if (memmem(block, have, needle, nl)) {
            found = true;
            break;
        }
        /* The needle may straddle two reads. */
        keep = have < nl ? have : nl - 1;
        memmove(block, block + have - keep, keep);
    }
    close(fd);
    return found;
}

/* A prepared fixture whose store directory is on a fresh 64 MiB ext4 on a loop
 * device; returns the image's path. */
static void store_on_its_own_disk(char *image, size_t size)
{
    if (access("/dev/loop-control", F_OK) != 0) {
        const char *ci = getenv("CI");
        if (ci && strcmp(ci, "true") == 0)
            cr_assert_fail("no loop devices here (/dev/loop-control) and CI=true");
        cr_skip_test("no loop devices here (/dev/loop-control)");
    }
    bus_prepare(&bus);
    snprintf(image, size, "%.4000s/disk.img", bus.dir);
    char *argv_mkfs[] = {"mkfs.ext4", "-q", "-F", "-E", "nodiscard", image, "64M", NULL};
    struct bus_cmd r;
    cr_assert_eq(bus_exec(NULL, argv_mkfs, 30000, &r), 0, "mkfs.ext4: %s", r.err);
    bus_cmd_free(&r);
    char *argv_mount[] = {"mount", "-o", "loop", image, bus.store, NULL};
    cr_assert_eq(bus_exec(NULL, argv_mount, 30000, &r), 0, "mount -o loop: %s", r.err);
    bus_cmd_free(&r);
    /* busfs's own directory inside it (ext4's root holds lost+found). */
    strncat(bus.store, "/busfs", sizeof bus.store - strlen(bus.store) - 1);
    cr_assert_eq(mkdir(bus.store, 0700), 0, "%s", strerror(errno));
}

Test(sync, a_send_is_on_the_disk_when_it_returns, .fini = bus_teardown,
     .timeout = BUS_TEST_TIMEOUT)
{
    char image[PATH_MAX];
    store_on_its_own_disk(image, sizeof image);
    const char *args[] = {"--sync", NULL};
    bus_launch(&bus, args);
    cr_assert_eq(mkdir(AT("agents/alice"), 0755), 0);
    cr_assert_eq(mkdir(AT("agents/bob"), 0755), 0);
    for (int i = 0; i < 20; i++) {
        char mark[64], text[128];
        snprintf(mark, sizeof mark, "on-the-disk-%d-%d-%lld", (int)getpid(), i, bus_now_ms());
        /* Sends through outbox/B (committed at close) and through `send` (committed
         * at the write), in turn. */
        if (i % 2)
            snprintf(text, sizeof text, "%s\n", mark);
        else
            snprintf(text, sizeof text, "{\"to\":\"bob\",\"payload\":\"%s\"}\n", mark);
        cr_assert_eq(bus_write(i % 2 ? AT("agents/alice/outbox/bob") : AT("agents/alice/send"),
                               text),
                     0, "send %d", i);
        cr_assert(image_holds(image, mark), "send %d returned before %s was on the disk", i,
                  mark);
    }
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 20);
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "grep -c 'pid [0-9]*), --sync$' %s", bus.log), 0,
                 "the server says it runs with --sync");
    bus_cmd_free(&r);
    bus_terminate(&bus);
}

/* The server's start line ends with its choice: ", --sync" or ", --no-sync". */
static void expect_mode(const char *mode)
{
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "grep -c 'pid [0-9]*), %s$' %s", mode, bus.log), 0,
                 "a start with %s: %s", mode, r.out);
    bus_cmd_free(&r);
}

Test(sync, on_by_default_for_a_disk_store_and_off_on_tmpfs, .fini = bus_teardown,
     .timeout = BUS_TEST_TIMEOUT)
{
    char image[PATH_MAX];
    store_on_its_own_disk(image, sizeof image);
    bus_launch(&bus, NULL);
    expect_mode("--sync");
    cr_assert_eq(mkdir(AT("agents/alice"), 0755), 0);
    cr_assert_eq(mkdir(AT("agents/bob"), 0755), 0);
    char mark[64], text[80];
    snprintf(mark, sizeof mark, "by-default-%d-%lld", (int)getpid(), bus_now_ms());
    snprintf(text, sizeof text, "%s\n", mark);
    cr_assert_eq(bus_write(AT("agents/alice/outbox/bob"), text), 0);
    cr_assert(image_holds(image, mark), "the default on a disk store syncs");
    bus_terminate(&bus);
    const char *off[] = {"--no-sync", NULL};
    bus_launch(&bus, off);
    expect_mode("--no-sync");
    bus_terminate(&bus);

    /* A store on tmpfs (/dev/shm): nothing to sync for. */
    char shm[] = "/dev/shm/busfs-sync-test-XXXXXX";
    cr_assert(mkdtemp(shm), "mkdtemp: %s", strerror(errno));
    snprintf(bus.store, sizeof bus.store, "%s", shm);
    bus_launch(&bus, NULL);
    expect_mode("--no-sync");
    bus_terminate(&bus);
    struct bus_cmd r;
    bus_sh(&bus, &r, "rm -rf %s", shm);
    bus_cmd_free(&r);
}

Test(sync, eight_writers_to_one_recipient_all_succeed, .fini = bus_teardown,
     .timeout = BUS_TEST_TIMEOUT)
{
    /* Concurrent sends through one outbox/B, their replies held for shared syncs:
     * every one opens, writes and closes without error and is delivered once. */
    bus_prepare(&bus);
    const char *args[] = {"--sync", "--inbox-capacity", "100000", NULL};
    bus_launch(&bus, args);
    cr_assert_eq(mkdir(AT("agents/alice"), 0755), 0);
    cr_assert_eq(mkdir(AT("agents/bob"), 0755), 0);
    /* Eight processes, each open(O_CREAT|O_TRUNC) + write + close, as fast as they go. */
    const char *path = AT("agents/alice/outbox/bob");
    pid_t pids[8];
    for (int k = 0; k < 8; k++) {
        pids[k] = fork();
        cr_assert_geq(pids[k], 0, "fork: %s", strerror(errno));
        if (pids[k] == 0) {
            for (int i = 0; i < 300; i++) {
                char text[32];
                int n = snprintf(text, sizeof text, "w%d-%d\n", k, i);
                int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
                if (fd < 0 || write(fd, text, (size_t)n) != n || close(fd) != 0)
                    _exit(1 + (errno & 0x3f));
            }
            _exit(0);
        }
    }
    for (int k = 0; k < 8; k++) {
        int st = 0;
        cr_assert_eq(waitpid(pids[k], &st, 0), pids[k]);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "writer %d failed: %s", k,
                  WIFEXITED(st) && WEXITSTATUS(st) ? strerror(WEXITSTATUS(st) - 1) : "killed");
    }
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 8 * 300);
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "grep -c 'cannot be reopened' agents/alice/errors"), 1,
                 "no send met another's message: %s", r.out);
    bus_cmd_free(&r);
    bus_terminate(&bus);
}

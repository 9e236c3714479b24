/*
 * test_nomem.c — SPEC §11, memory: a server short of memory refuses sends with
 * ENOMEM and never acknowledges a message it did not store whole.
 *
 * The server's address space is capped (prlimit RLIMIT_AS) a little above what it
 * maps already, and large messages are sent until the allocations of a send fail.
 * Every send that close() acknowledged must then be in the inbox, well-formed and
 * complete; every refused one must be absent; with the cap lifted the bus works on
 * and `busfs --check` finds the store intact. The refusals come at write(), which
 * a shell reports: a `cat FILE > outbox/B` that exits 0 has sent its message.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define SENDS 80
#define HEADROOM (16u << 20) /* bytes of address space beyond what the server maps */

/* VmSize of a process in bytes, or 0. */
static unsigned long long vm_size(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char line[256];
    unsigned long long kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmSize: %llu kB", &kb) == 1)
            break;
    fclose(f);
    return kb * 1024;
}

static int write_file(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return errno;
    int rc = write(fd, data, len) == (ssize_t)len ? 0 : EIO;
    close(fd);
    return rc;
}

static size_t body_size(int i)
{
    return (size_t)(256 << 10) + (size_t)(i % 4) * (128 << 10); /* 256-640 KiB */
}

static char *body_of(int i)
{
    size_t n = body_size(i);
    char *s = malloc(n + 1);
    cr_assert_not_null(s);
    memset(s, 'a' + i % 26, n);
    s[n] = '\n';
    return s;
}

BUS_TEST(nomem, a_server_short_of_memory_refuses_with_enomem_and_keeps_what_it_acked)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "before the cap\n");
    unsigned long long mapped = vm_size(bus.pid);
    cr_assert_gt(mapped, 0, "no VmSize for the server");
    if (mapped > (1ull << 40))
        cr_skip_test("the server is built with AddressSanitizer, whose shadow memory no "
                     "address-space limit can leave room for");
    /* Only the soft limit: lifting it again needs no privilege. */
    struct rlimit none;
    cr_assert_eq(prlimit(bus.pid, RLIMIT_AS, NULL, &none), 0, "prlimit: %s", strerror(errno));
    struct rlimit cap = {mapped + HEADROOM, none.rlim_max};
    cr_assert_eq(prlimit(bus.pid, RLIMIT_AS, &cap, NULL), 0, "prlimit: %s", strerror(errno));

    bool acked[SENDS];
    int refused = 0, sent = 0, at_close = 0, by_shell = 0, shell_refused = 0;
    char file[PATH_MAX + 16];
    snprintf(file, sizeof file, "%s/body", bus.dir);
    for (int i = 0; i < SENDS; i++) {
        char *body = body_of(i);
        enum bus_step step = BUS_STEP_NONE;
        int e;
        if (i % 4 == 3) {
            /* As a shell sends: a command that exits 0 has sent its message. */
            cr_assert_eq(write_file(file, body, body_size(i) + 1), 0);
            struct bus_cmd r;
            e = bus_sh(&bus, &r, "cat %s > agents/alice/outbox/bob", file) == 0 ? 0 : ENOMEM;
            if (e)
                cr_assert(strstr(r.err, strerror(ENOMEM)), "send %d: the shell said %s", i,
                          r.err);
            bus_cmd_free(&r);
            by_shell++;
            shell_refused += e != 0;
        } else {
            e = bus_write_ex(AT("agents/alice/outbox/bob"), O_WRONLY | O_CREAT | O_TRUNC, body,
                             body_size(i) + 1, &step);
        }
        free(body);
        acked[i] = e == 0;
        if (e == 0) {
            sent++;
            continue;
        }
        refused++;
        at_close += step == BUS_STEP_CLOSE;
        if (e != ENOMEM) {
            prlimit(bus.pid, RLIMIT_AS, &none, NULL);
            cr_assert_fail("send %d failed with %s at step %d, not ENOMEM", i, strerror(e),
                           (int)step);
        }
    }
    cr_assert_eq(prlimit(bus.pid, RLIMIT_AS, &none, NULL), 0, "prlimit: %s", strerror(errno));
    cr_assert_leq(at_close * 4, refused, "%d of %d refusals came only at close(), which bash "
                  "does not report", at_close, refused);
    cr_assert(shell_refused > 0 && shell_refused < by_shell,
              "%d of %d shell sends refused: the cap should have been met half-way",
              shell_refused, by_shell);
    cr_assert_gt(refused, 0, "%d sends of up to 640 KiB fit in %u MiB: the cap was not felt",
                 SENDS, HEADROOM >> 20);
    cr_assert_gt(sent, 0, "not one send fit under the cap");

    /* Every acknowledged message, whole and in order; nothing of a refused one. */
    json_t *in = bus_inbox("bob");
    cr_assert_eq(json_array_size(in), (size_t)sent + 1, "%zu messages in the inbox, %d acked",
                 json_array_size(in), sent + 1);
    size_t at = 1;
    for (int i = 0; i < SENDS; i++) {
        if (!acked[i])
            continue;
        const char *p = bus_str(json_array_get(in, at), "payload");
        cr_assert_eq(strlen(p), body_size(i), "message %d: %zu bytes of payload", i, strlen(p));
        cr_assert_eq(p[0], 'a' + i % 26, "message %d arrived out of order", i);
        at++;
    }
    json_decref(in);
    bus_assert_logged(AT("errors"), 0, "sends refused for memory");

    bus_send("alice", "bob", "after the cap\n");
    bus_terminate(&bus);
    char *argv[] = {(char *)bus_bin(), "--check", "--store", bus.store, NULL};
    struct bus_cmd c;
    int status = bus_exec(NULL, argv, BUS_WAIT_MS, &c);
    cr_assert_eq(status, 0, "busfs --check after running short of memory: %d: %s%s", status,
                 c.out, c.err);
    bus_cmd_free(&c);
}

#define OPEN_DRAFTS 30

/* Many large messages written side by side, then closed: the memory each commit
 * needs is held from its writes on, so a server short of memory refuses at write();
 * a close that still fails says why in `errors`, and nothing acknowledged is lost. */
BUS_TEST(nomem, open_drafts_under_a_memory_cap_are_refused_at_write_and_every_refusal_is_logged)
{
    bus_agents(&bus, "alice", "bob", NULL);
    unsigned long long mapped = vm_size(bus.pid);
    cr_assert_gt(mapped, 0, "no VmSize for the server");
    if (mapped > (1ull << 40))
        cr_skip_test("the server is built with AddressSanitizer, whose shadow memory no "
                     "address-space limit can leave room for");
    struct rlimit none;
    cr_assert_eq(prlimit(bus.pid, RLIMIT_AS, NULL, &none), 0, "prlimit: %s", strerror(errno));
    struct rlimit cap = {mapped + HEADROOM, none.rlim_max};
    cr_assert_eq(prlimit(bus.pid, RLIMIT_AS, &cap, NULL), 0, "prlimit: %s", strerror(errno));

    size_t len = 512 << 10;
    char *body = malloc(len);
    cr_assert_not_null(body);
    memset(body, 'x', len);
    int fds[OPEN_DRAFTS], written = 0, at_write = 0, at_close = 0, closed = 0;
    bool wrote[OPEN_DRAFTS];
    for (int i = 0; i < OPEN_DRAFTS; i++) {
        fds[i] = open(AT("agents/alice/outbox/bob"), O_WRONLY | O_CREAT, 0644);
        cr_assert_geq(fds[i], 0, "open %d: %s", i, strerror(errno));
        wrote[i] = write(fds[i], body, len) == (ssize_t)len;
        if (wrote[i]) {
            written++;
        } else {
            cr_assert_eq(errno, ENOMEM, "write %d: %s", i, strerror(errno));
            at_write++;
        }
    }
    for (int i = 0; i < OPEN_DRAFTS; i++) {
        int rc = close(fds[i]);
        cr_assert(rc == 0 || errno == ENOMEM, "close %d: %s", i, strerror(errno));
        cr_assert(wrote[i] || rc < 0, "close %d sent a message whose write was refused", i);
        closed += rc == 0;
        at_close += rc < 0 && wrote[i]; /* refused only at close */
    }
    free(body);
    cr_assert_eq(prlimit(bus.pid, RLIMIT_AS, &none, NULL), 0, "prlimit: %s", strerror(errno));
    cr_assert_gt(at_write, 0, "%d drafts of 512 KiB fit in %u MiB: the cap was not felt",
                 OPEN_DRAFTS, HEADROOM >> 20);
    cr_assert_gt(written, 0, "not one draft fit under the cap");
    cr_assert_leq(at_close * 4, at_write + at_close, "%d refusals came only at close(), %d at "
                  "write()", at_close, at_write);
    /* The messages whose close succeeded, and only those; each refusal has its reason. */
    json_t *in = bus_inbox("bob");
    cr_assert_eq(json_array_size(in), (size_t)closed, "%zu messages, %d acked",
                 json_array_size(in), closed);
    for (size_t i = 0; i < json_array_size(in); i++)
        cr_assert_eq(strlen(bus_str(json_array_get(in, i), "payload")), len);
    json_decref(in);
    char *errors = bus_read_ok(AT("errors"), NULL);
    int logged = 0;
    for (const char *p = errors; (p = strstr(p, "\"errno\":\"ENOMEM\"")); p++)
        logged++;
    free(errors);
    cr_assert_geq(logged, at_write + at_close, "%d ENOMEM reasons in errors for %d refusals",
                  logged, at_write + at_close);
}

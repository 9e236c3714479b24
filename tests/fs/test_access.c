/*
 * test_access.c — SPEC §8: writes to read-only files, and create, rename,
 * link, symlink, mknod, chmod, chown where they mean nothing, fail with
 * EACCES, change nothing, and leave a reason in `errors`.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Two agents, one message alice -> bob; returns bob's inbox file and
 * alice's outbox file names (relative to the mount, malloc'd). */
static void one_message(char **inbox_file, char **outbox_file)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "keep me");
    size_t n;
    char **names = bus_ls(AT("agents/bob/inbox"), &n);
    cr_assert(names && n == 1);
    cr_assert(asprintf(inbox_file, "agents/bob/inbox/%s", names[0]) > 0);
    bus_ls_free(names, n);
    names = bus_ls(AT("agents/alice/outbox"), &n);
    cr_assert(names && n == 1, "alice's outbox lists %zu files", n);
    cr_assert(asprintf(outbox_file, "agents/alice/outbox/%s", names[0]) > 0);
    bus_ls_free(names, n);
}

/* Opening rel for writing (several ways) fails with EACCES, logged; the
 * shell's `echo >` and `echo >>` fail too; the content is unchanged. */
static void assert_read_only(const char *rel)
{
    char *before = bus_read_ok(AT("%s", rel), NULL);
    const int modes[] = {O_WRONLY, O_RDWR, O_WRONLY | O_APPEND, O_WRONLY | O_TRUNC};
    for (size_t i = 0; i < sizeof modes / sizeof *modes; i++) {
        size_t top = bus_jsonl_count(AT("errors"));
        errno = 0;
        int fd = open(AT("%s", rel), modes[i] | O_CLOEXEC);
        int err = errno;
        if (fd >= 0)
            close(fd);
        cr_assert(fd < 0 && err == EACCES, "open(%s, %#o) gave %s, want EACCES", rel,
                  (unsigned)modes[i], fd >= 0 ? "success" : strerror(err));
        bus_assert_logged(AT("errors"), top, rel);
    }
    struct bus_cmd r;
    cr_assert_neq(bus_sh(&bus, &r, "echo x > '%s'", rel), 0, "echo > %s succeeded", rel);
    cr_assert(strstr(r.err, strerror(EACCES)), "echo > %s: the shell said %s", rel, r.err);
    bus_cmd_free(&r);
    cr_assert_neq(bus_sh(&bus, NULL, "echo x >> '%s'", rel), 0, "echo >> %s succeeded", rel);
    char *after = bus_read_ok(AT("%s", rel), NULL);
    if (strcmp(rel, "errors") != 0 && strstr(rel, "/errors") == NULL)
        cr_assert_str_eq(before, after, "%s changed", rel);
    free(before);
    free(after);
}

BUS_TEST(access, writes_to_readme_fail_with_eacces)
{
    assert_read_only("README");
}

BUS_TEST(access, writes_to_errors_files_fail_with_eacces)
{
    bus_agents(&bus, "alice", NULL);
    assert_read_only("errors");
    assert_read_only("agents/alice/errors");
}

BUS_TEST(access, writes_to_inbox_and_outbox_files_fail_with_eacces)
{
    char *in, *out;
    one_message(&in, &out);
    assert_read_only(in);
    assert_read_only(out);
    json_t *inbox = bus_inbox("bob");
    cr_assert_eq(json_array_size(inbox), 1);
    cr_assert_str_eq(bus_str(json_array_get(inbox, 0), "payload"), "keep me");
    json_decref(inbox);
    free(in);
    free(out);
}

BUS_TEST(access, writes_to_next_fail_with_eacces)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "keep me");
    assert_read_only("agents/bob/next");
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 1);
}

/* creat(rel) and `echo x > rel` fail with EACCES, logged; nothing appears. */
static void assert_create_refused(const char *rel)
{
    size_t top = bus_jsonl_count(AT("errors"));
    errno = 0;
    int fd = open(AT("%s", rel), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    int err = errno;
    if (fd >= 0)
        close(fd);
    cr_assert(fd < 0 && err == EACCES, "creating %s gave %s, want EACCES", rel,
              fd >= 0 ? "success" : strerror(err));
    bus_assert_logged(AT("errors"), top, rel);
    struct bus_cmd r;
    cr_assert_neq(bus_sh(&bus, &r, "echo x > '%s'", rel), 0, "echo > %s succeeded", rel);
    cr_assert(strstr(r.err, strerror(EACCES)), "echo > %s: the shell said %s", rel, r.err);
    bus_cmd_free(&r);
    struct stat st;
    cr_assert(stat(AT("%s", rel), &st) < 0, "%s exists after a refused create", rel);
}

BUS_TEST(access, creating_files_where_that_means_nothing_fails_with_eacces)
{
    char *in, *out;
    one_message(&in, &out);
    char name[600];
    snprintf(name, sizeof name, "%s.copy", in);
    assert_create_refused("agents/bob/inbox/00000000000000000001-fake.json");
    assert_create_refused(name);
    assert_create_refused("agents/bob/notes");
    assert_create_refused("agents/notes");
    assert_create_refused("notes");
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 1);
    cr_assert_eq(bus_count(AT("agents")), 2);
    free(in);
    free(out);
}

BUS_TEST(access, mkdir_outside_agents_fails_with_eacces)
{
    bus_agents(&bus, "bob", NULL);
    const char *dirs[] = {"topdir", "agents/bob/sub", "agents/bob/inbox/sub",
                          "agents/bob/outbox/sub"};
    for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) {
        size_t top = bus_jsonl_count(AT("errors"));
        errno = 0;
        cr_assert(mkdir(AT("%s", dirs[i]), 0755) < 0 && errno == EACCES,
                  "mkdir %s gave %s, want EACCES", dirs[i], strerror(errno));
        bus_assert_logged(AT("errors"), top, dirs[i]);
    }
}

/* The result of one refused operation: errno must be EACCES and logged. */
static void assert_refused(int rc, const char *what, size_t top)
{
    int err = errno;
    cr_assert(rc < 0 && err == EACCES, "%s gave %s, want EACCES", what,
              rc < 0 ? strerror(err) : "success");
    bus_assert_logged(AT("errors"), top, what);
}

BUS_TEST(access, rename_link_symlink_and_mknod_fail_with_eacces)
{
    char *in, *out;
    one_message(&in, &out);
    char other[600];
    snprintf(other, sizeof other, "%s", in);
    other[strlen("agents/bob/inbox/")] = '9'; /* another delivery number */

    size_t top = bus_jsonl_count(AT("errors"));
    errno = 0;
    assert_refused(rename(AT("%s", in), AT("%s", other)), "rename of an inbox file", top);
    top = bus_jsonl_count(AT("errors"));
    errno = 0;
    assert_refused(rename(AT("%s", in), AT("agents/alice/inbox/x.json")),
                   "rename of an inbox file to another inbox", top);
    top = bus_jsonl_count(AT("errors"));
    errno = 0;
    assert_refused(rename(AT("agents/bob"), AT("agents/robert")), "rename of an agent", top);
    top = bus_jsonl_count(AT("errors"));
    errno = 0;
    assert_refused(rename(AT("README"), AT("README.old")), "rename of README", top);
    top = bus_jsonl_count(AT("errors"));
    errno = 0;
    assert_refused(link(AT("%s", in), AT("%s", other)), "link of an inbox file", top);
    top = bus_jsonl_count(AT("errors"));
    errno = 0;
    assert_refused(link(AT("README"), AT("agents/bob/readme")), "link of README", top);
    top = bus_jsonl_count(AT("errors"));
    errno = 0;
    assert_refused(symlink("../README", AT("agents/bob/inbox/l")), "symlink in an inbox", top);
    top = bus_jsonl_count(AT("errors"));
    errno = 0;
    assert_refused(symlink("README", AT("readme-link")), "symlink at the top", top);
    top = bus_jsonl_count(AT("errors"));
    errno = 0;
    assert_refused(mkfifo(AT("agents/bob/fifo"), 0600), "mkfifo in an agent", top);
    top = bus_jsonl_count(AT("errors"));
    errno = 0;
    assert_refused(mknod(AT("agents/bob/inbox/node"), S_IFREG | 0600, 0), "mknod in an inbox", top);

    struct bus_cmd r;
    cr_assert_neq(bus_sh(&bus, &r, "mv '%s' agents/bob/inbox/moved", in), 0, "mv succeeded");
    bus_cmd_free(&r);
    cr_assert_neq(bus_sh(&bus, &r, "ln -s README link"), 0, "ln -s succeeded");
    bus_cmd_free(&r);

    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 1);
    cr_assert_eq(bus_count(AT("agents/alice/inbox")), 0);
    struct bus_cmd ls;
    cr_assert_eq(bus_sh(&bus, &ls, "ls agents"), 0);
    cr_assert_str_eq(ls.out, "alice\nbob\n");
    bus_cmd_free(&ls);
    free(in);
    free(out);
}

BUS_TEST(access, chmod_and_chown_fail_with_eacces)
{
    char *in, *out;
    one_message(&in, &out);
    const char *paths[] = {"README", in, out, "agents/bob", "agents/bob/ctl"};
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++) {
        struct stat before, after;
        cr_assert(stat(AT("%s", paths[i]), &before) == 0);
        size_t top = bus_jsonl_count(AT("errors"));
        errno = 0;
        assert_refused(chmod(AT("%s", paths[i]), 0777), paths[i], top);
        top = bus_jsonl_count(AT("errors"));
        errno = 0;
        assert_refused(chown(AT("%s", paths[i]), 4242, 4242), paths[i], top);
        cr_assert(stat(AT("%s", paths[i]), &after) == 0);
        cr_assert(before.st_mode == after.st_mode && before.st_uid == after.st_uid,
                  "%s changed mode or owner", paths[i]);
    }
    cr_assert_neq(bus_sh(&bus, NULL, "chmod 666 README"), 0, "chmod 666 README succeeded");
    free(in);
    free(out);
}

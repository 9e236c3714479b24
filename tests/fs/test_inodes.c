/* test_inodes.c — inode numbers stay unique and never run out (SPEC §11): after more
 * than 2^20 agents have been created and removed, every file of the tree still works,
 * and `ls -i`, stat and readdir agree.
 *
 * A million mkdir/rmdir round trips through FUSE take minutes, so the churn is made
 * with the core library on the store before the server starts: the journal then
 * holds 1,050,000 registrations and removals, and replaying them at start hands out
 * agent ids exactly as a server that lived through them would. */
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHURN 1050000 /* past 2^20 = 1,048,576 */

static void churn_store(const char *store)
{
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0)
        _exit(bus_store_churn_agents(store, CHURN) == 0 ? 0 : 3);
    int status = bus_wait_child(pid, 50000);
    cr_assert_eq(status, 0, "churning the store: status %d", status);
}

static void setup_after_churn(void)
{
    bus_prepare(&bus);
    churn_store(bus.store);
    bus_launch(&bus, NULL);
}

static ino_t ino_in_dir(const char *dir, const char *name)
{
    DIR *d = opendir(dir);
    cr_assert(d, "opendir %s: %s", dir, strerror(errno));
    ino_t ino = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, name) == 0)
            ino = e->d_ino;
    closedir(d);
    cr_assert(ino, "%s has no entry %s", dir, name);
    return ino;
}

static void assert_same_inode(const char *dir, const char *name)
{
    char path[2 * PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "stat %s: %s", path, strerror(errno));
    cr_assert_eq(st.st_ino, ino_in_dir(dir, name), "%s: readdir and stat disagree", path);
}

BUS_TEST_WITH(inodes, every_file_works_after_a_million_agents_came_and_went, setup_after_churn)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "after the churn");

    /* The inbox file: listed, stat'ed, read, and its inode the one readdir gives. */
    char inbox[PATH_MAX], outbox[PATH_MAX];
    snprintf(inbox, sizeof inbox, "%s", bus_path(&bus, "agents/bob/inbox"));
    snprintf(outbox, sizeof outbox, "%s", bus_path(&bus, "agents/alice/outbox"));
    size_t n = 0;
    char **names = bus_ls(inbox, &n);
    cr_assert_eq(n, 1, "bob's inbox holds %zu files", n);
    assert_same_inode(inbox, names[0]);
    json_t *env = bus_inbox("bob");
    cr_assert_eq(json_array_size(env), 1);
    cr_assert_str_eq(bus_str(json_array_get(env, 0), "payload"), "after the churn");
    json_decref(env);

    /* The outbox copy: its own inode, also readable. */
    size_t no = 0;
    char **sent = bus_ls(outbox, &no);
    cr_assert_eq(no, 1);
    assert_same_inode(outbox, sent[0]);
    char in_path[2 * PATH_MAX], out_path[2 * PATH_MAX];
    snprintf(in_path, sizeof in_path, "%s/%s", inbox, names[0]);
    snprintf(out_path, sizeof out_path, "%s/%s", outbox, sent[0]);
    struct stat si, so;
    cr_assert_eq(stat(in_path, &si), 0);
    cr_assert_eq(stat(out_path, &so), 0);
    cr_assert_neq(si.st_ino, so.st_ino, "inbox and outbox copies share an inode");
    json_t *out = bus_outbox("alice");
    cr_assert_eq(json_array_size(out), 1);
    json_decref(out);

    /* The agents' own files, next and rm. */
    assert_same_inode(bus_path(&bus, "agents"), "bob");
    assert_same_inode(bus_path(&bus, "agents/bob"), "ctl");
    size_t len = 0;
    char *next = bus_read_ok(bus_path(&bus, "agents/bob/next"), &len);
    cr_assert(strstr(next, "after the churn"), "next: %s", next);
    free(next);
    cr_assert_eq(unlink(in_path), 0, "rm %s: %s", in_path, strerror(errno));
    cr_assert_eq(bus_count(inbox), 0);
    bus_ls_free(names, n);
    bus_ls_free(sent, no);
}

/* A removed agent's inodes never name a new agent of the same name. */
BUS_TEST(inodes, a_removed_agents_inode_never_names_its_successor)
{
    bus_agents(&bus, "carol", NULL);
    struct stat before, after;
    cr_assert_eq(stat(bus_path(&bus, "agents/carol/ctl"), &before), 0);
    cr_assert_eq(rmdir(bus_path(&bus, "agents/carol")), 0);
    bus_agents(&bus, "carol", NULL);
    cr_assert_eq(stat(bus_path(&bus, "agents/carol/ctl"), &after), 0);
    cr_assert_neq(before.st_ino, after.st_ino);
}

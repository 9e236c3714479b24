/*
 * test_install.c — installing busfs as a packager or an operator would: `make
 * install DESTDIR=... PREFIX=/usr` puts the binary, busfs(8) and the docs in place
 * with sane modes, the installed binary answers --version and --help and serves a
 * real mount, `make uninstall` leaves no file behind; and examples/busfs.service is
 * a unit systemd accepts, with the options a service needs.
 *
 * make runs in the repository that holds the binary under test (BUSFS_BIN) with
 * `-o BIN`, so it installs exactly that binary and never rebuilds it under the feet
 * of the tests running beside this one. Everything goes into the test's temp dir
 * (/tmp/busfs-test-XXXXXX/dest), which .fini removes.
 */
#include "harness.h"

#include <ctype.h>
#include <errno.h>
#include <ftw.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAKE_WAIT_MS 60000

/* The repository around the binary under test, and that binary's path relative to
 * it (busfs, or build-asan/busfs for `make asan`). */
struct repo {
    char root[PATH_MAX];
    char bin[PATH_MAX];
};

static void find_repo(struct repo *r)
{
    char bin[PATH_MAX], dir[PATH_MAX];
    cr_assert(realpath(bus_bin(), bin), "realpath %s", bus_bin());
    snprintf(dir, sizeof dir, "%s", bin);
    for (int up = 0; up < 3; up++) {
        char parent[PATH_MAX], probe[PATH_MAX + 32];
        snprintf(parent, sizeof parent, "%s", dirname(dir));
        snprintf(dir, sizeof dir, "%s", parent);
        snprintf(probe, sizeof probe, "%s/Makefile", dir);
        if (access(probe, R_OK) != 0)
            continue;
        snprintf(probe, sizeof probe, "%s/fs/busfs.8", dir);
        if (access(probe, R_OK) != 0)
            continue;
        size_t n = strlen(dir);
        cr_assert(strncmp(bin, dir, n) == 0 && bin[n] == '/', "%s is not under %s", bin, dir);
        snprintf(r->root, sizeof r->root, "%s", dir);
        snprintf(r->bin, sizeof r->bin, "%s", bin + n + 1);
        return;
    }
    cr_assert_fail("no repository (Makefile, fs/busfs.8) around %s", bin);
}

/* A make of our own: not a sub-make of whatever make runs the suite (`make asan`
 * passes BIN, BUILD and SAN down in MAKEFLAGS). */
static void forget_parent_make(void)
{
    unsetenv("MAKEFLAGS");
    unsetenv("MFLAGS");
    unsetenv("MAKELEVEL");
    unsetenv("MAKEOVERRIDES");
}

/* `make -C ROOT -o BIN TARGET DESTDIR=DEST PREFIX=/usr BIN=BIN` */
static void make_target(const struct repo *r, const char *target, const char *dest)
{
    char destdir[PATH_MAX + 16], binvar[PATH_MAX + 16];
    snprintf(destdir, sizeof destdir, "DESTDIR=%s", dest);
    snprintf(binvar, sizeof binvar, "BIN=%s", r->bin);
    char *argv[] = {"make",         "--no-print-directory", "-C",    (char *)r->root,
                    "-o",           (char *)r->bin,         (char *)target,
                    destdir,        "PREFIX=/usr",          binvar,  NULL};
    forget_parent_make();
    struct bus_cmd c;
    int status = bus_exec(NULL, argv, MAKE_WAIT_MS, &c);
    cr_assert_eq(status, 0, "make %s DESTDIR=%s: status %d\n%s%s", target, dest, status, c.out,
                 c.err);
    bus_cmd_free(&c);
}

static const char *at(const char *dir, const char *rel)
{
    static char ring[8][2 * PATH_MAX];
    static unsigned next;
    char *buf = ring[next++ % 8];
    snprintf(buf, sizeof ring[0], "%s/%s", dir, rel);
    return buf;
}

static void assert_file_mode(const char *path, mode_t want)
{
    struct stat st;
    cr_assert(stat(path, &st) == 0, "%s was not installed: %s", path, strerror(errno));
    cr_assert(S_ISREG(st.st_mode), "%s is not a regular file", path);
    cr_assert_eq(st.st_mode & 07777, want, "%s has mode %04o, want %04o", path,
                 (unsigned)(st.st_mode & 07777), (unsigned)want);
}

/* The bus's temp dir (no server yet) with DEST = dir/dest; .fini removes it all. */
static void prepare(void)
{
    bus_prepare(&bus);
}

static const char *dest_dir(void)
{
    static char dest[PATH_MAX + 8];
    snprintf(dest, sizeof dest, "%s/dest", bus.dir);
    return dest;
}

/* Files (not directories) left under a tree, for the uninstall check. */
static char leftovers[4096];

static int note_file(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    if (type != FTW_D && type != FTW_DP) {
        size_t n = strlen(leftovers);
        snprintf(leftovers + n, sizeof leftovers - n, "%s\n", path);
    }
    return 0;
}

/* The line after this one, or NULL at the end of the text. */
static const char *next_line(const char *line)
{
    const char *nl = strchr(line, '\n');
    return nl && nl[1] ? nl + 1 : NULL;
}

/* Is the option (in roff, "\\-\\-store") the tag of a .TP entry (".TP" then a line
 * of .B, .BI or .BR naming it as a whole word)? */
static bool tagged_option(const char *man, const char *roff)
{
    size_t n = strlen(roff);
    for (const char *tp = strstr(man, "\n.TP\n"); tp; tp = strstr(tp + 1, "\n.TP\n")) {
        const char *tag = tp + 5;
        if (strncmp(tag, ".B", 2) != 0)
            continue;
        size_t len = strcspn(tag, "\n");
        for (const char *p = strstr(tag, roff); p && p < tag + len; p = strstr(p + 1, roff)) {
            char before = p[-1], after = p[n];
            if ((before == ' ' || before == '"') &&
                (after == ' ' || after == '"' || after == '\n' || after == ','))
                return true;
        }
    }
    return false;
}

/* Every option `busfs --help` lists (-f, --store ...) appears in the man page. */
static void assert_options_documented(const char *help, const char *man)
{
    int checked = 0;
    for (const char *line = help; line; line = next_line(line)) {
        if (strncmp(line, "  -", 3) != 0)
            continue;
        const char *p = line + 2;
        while (*p == '-') {
            char opt[64], roff[160];
            size_t n = 0, m = 0;
            while (n < sizeof opt - 1 && (p[n] == '-' || isalpha((unsigned char)p[n]))) {
                opt[n] = p[n];
                n++;
            }
            opt[n] = '\0';
            for (size_t i = 0; i < n; i++) {
                if (opt[i] == '-')
                    roff[m++] = '\\';
                roff[m++] = opt[i];
            }
            roff[m] = '\0';
            cr_assert(tagged_option(man, roff),
                      "busfs --help lists %s but busfs.8 has no .TP entry for it (%s)", opt, roff);
            checked++;
            p += n;
            if (*p == ',' && p[1] == ' ')
                p += 2; /* "-f, --foreground" */
            else
                break;
        }
    }
    cr_assert_geq(checked, 15, "only %d options found in --help:\n%s", checked, help);
}

Test(install, make_install_and_uninstall_put_exactly_the_right_files, .init = prepare,
     .fini = bus_teardown, .timeout = BUS_TEST_TIMEOUT)
{
    struct repo r;
    find_repo(&r);
    const char *dest = dest_dir();
    make_target(&r, "install", dest);

    assert_file_mode(at(dest, "usr/bin/busfs"), 0755);
    assert_file_mode(at(dest, "usr/share/man/man8/busfs.8"), 0644);
    assert_file_mode(at(dest, "usr/share/doc/busfs/README.md"), 0644);
    assert_file_mode(at(dest, "usr/share/doc/busfs/examples/busfs.service"), 0644);
    /* Every file of examples/: scripts stay executable, the rest is 0644. */
    char examples[PATH_MAX + 16];
    snprintf(examples, sizeof examples, "%s/examples", r.root);
    size_t n;
    char **names = bus_ls(examples, &n);
    cr_assert(names, "ls %s: %s", examples, strerror(errno));
    for (size_t i = 0; i < n; i++) {
        char src[PATH_MAX + 300], rel[600];
        snprintf(src, sizeof src, "%s/%s", examples, names[i]);
        struct stat st;
        if (stat(src, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        snprintf(rel, sizeof rel, "usr/share/doc/busfs/examples/%s", names[i]);
        assert_file_mode(at(dest, rel), (st.st_mode & S_IXUSR) ? 0755 : 0644);
    }
    cr_assert_geq(n, 2, "examples/ has %zu files", n);
    bus_ls_free(names, n);

    /* The installed binary runs on its own. */
    char *bin = strdup(at(dest, "usr/bin/busfs"));
    struct bus_cmd c;
    char *version[] = {bin, "--version", NULL};
    cr_assert_eq(bus_exec(NULL, version, 5000, &c), 0, "busfs --version: %s", c.err);
    cr_assert(bus_match("busfs [0-9]+\\.[0-9]+\\.[0-9]+ \\(libfuse [0-9.]+\\)\n", c.out), "%s",
              c.out);
    bus_cmd_free(&c);
    char *help[] = {bin, "--help", NULL};
    cr_assert_eq(bus_exec(NULL, help, 5000, &c), 0, "busfs --help: %s", c.err);
    cr_assert(strncmp(c.out, "Usage: busfs ", 13) == 0, "%s", c.out);
    char *man = bus_read_ok(at(dest, "usr/share/man/man8/busfs.8"), NULL);
    assert_options_documented(c.out, man);
    cr_assert(strstr(man, ".TH BUSFS 8 "), "busfs.8 has no .TH BUSFS 8 line");
    free(man);
    bus_cmd_free(&c);

    /* The man page renders without a warning, when groff is there to say so. */
    char *groff[] = {"groff", "-man", "-Tutf8", "-ww", "-z",
                     (char *)at(dest, "usr/share/man/man8/busfs.8"), NULL};
    int status = bus_exec(NULL, groff, 10000, &c);
    if (status == 127)
        cr_log_warn("groff is not installed: busfs.8 not rendered");
    else
        cr_assert(status == 0 && c.err_len == 0, "groff -ww on busfs.8: status %d\n%s", status,
                  c.err);
    bus_cmd_free(&c);

    make_target(&r, "uninstall", dest);
    leftovers[0] = '\0';
    cr_assert(nftw(dest, note_file, 16, FTW_PHYS) == 0, "walking %s: %s", dest, strerror(errno));
    cr_assert_str_empty(leftovers, "make uninstall left files behind:\n%s", leftovers);
    cr_assert(access(at(dest, "usr/share/doc/busfs"), F_OK) != 0,
              "make uninstall left usr/share/doc/busfs");
    free(bin);
    bus_stop(&bus);
}

/* `make install` builds the binary first (a dry run with a BIN that does not exist
 * yet: the link comes before the install). */
Test(install, make_install_builds_the_binary_first, .init = prepare, .fini = bus_teardown,
     .timeout = BUS_TEST_TIMEOUT)
{
    struct repo r;
    find_repo(&r);
    char binvar[PATH_MAX + 32], newbin[PATH_MAX + 16], destdir[PATH_MAX + 32];
    snprintf(newbin, sizeof newbin, "%s/newbusfs", bus.dir);
    snprintf(binvar, sizeof binvar, "BIN=%s", newbin);
    snprintf(destdir, sizeof destdir, "DESTDIR=%s", dest_dir());
    char *argv[] = {"make", "-n", "--no-print-directory", "-C", r.root, "install", destdir,
                    "PREFIX=/usr", binvar, NULL};
    forget_parent_make();
    struct bus_cmd c;
    int status = bus_exec(NULL, argv, MAKE_WAIT_MS, &c);
    cr_assert_eq(status, 0, "make -n install: status %d\n%s", status, c.err);
    char link[2 * PATH_MAX], copy[2 * PATH_MAX];
    snprintf(link, sizeof link, "-o %s ", newbin);
    snprintf(copy, sizeof copy, "install -D -m 0755 %s ", newbin);
    const char *l = strstr(c.out, link), *i = strstr(c.out, copy);
    cr_assert(l, "make install does not build BIN first:\n%s", c.out);
    cr_assert(i && l < i, "make install does not install BIN after building it:\n%s", c.out);
    cr_assert(access(newbin, F_OK) != 0, "make -n built something");
    bus_cmd_free(&c);
    bus_stop(&bus);
}

/* The installed binary mounts a bus, serves it and stops cleanly on SIGTERM. */
Test(install, installed_binary_serves_a_bus_and_stops_on_sigterm, .init = prepare,
     .fini = bus_teardown, .timeout = BUS_TEST_TIMEOUT)
{
    bus_require_fuse();
    struct repo r;
    find_repo(&r);
    make_target(&r, "install", dest_dir());
    /* bus_launch runs BUSFS_BIN: from here on, the installed copy. */
    cr_assert(setenv("BUSFS_BIN", at(dest_dir(), "usr/bin/busfs"), 1) == 0);
    bus_launch(&bus, NULL);

    struct bus_cmd c;
    cr_assert_eq(bus_sh(&bus, &c, "mkdir agents/x && echo healthy > agents/x/health && "
                                  "cat agents/x/health"),
                 0, "%s", c.err);
    json_t *h = bus_json_file(AT("agents/x/health"), 0);
    cr_assert_str_eq(bus_str(h, "agent"), "x");
    cr_assert_str_eq(bus_str(h, "status"), "healthy");
    json_decref(h);
    cr_assert(strstr(c.out, "\"status\":\"healthy\""), "%s", c.out);
    bus_cmd_free(&c);

    bus_terminate(&bus); /* SIGTERM: exit 0, the mount gone */
    bus_stop(&bus);
}

/* ---- examples/busfs.service ------------------------------------------ */

/* The value of the first `KEY=` line of a unit (static buffer), or NULL. */
static const char *unit_value(const char *unit, const char *key)
{
    static char value[4096];
    size_t k = strlen(key);
    for (const char *line = unit; line; line = next_line(line)) {
        if (strncmp(line, key, k) == 0 && line[k] == '=') {
            size_t n = strcspn(line + k + 1, "\n");
            snprintf(value, sizeof value, "%.*s", (int)n, line + k + 1);
            return value;
        }
    }
    return NULL;
}

/* Does the space-separated command line have this word? */
static bool has_word(const char *cmd, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = strstr(cmd, word); p; p = strstr(p + 1, word))
        if ((p == cmd || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0'))
            return true;
    return false;
}

Test(install, service_unit_runs_busfs_in_the_foreground_and_stops_it_cleanly, .init = prepare,
     .fini = bus_teardown, .timeout = BUS_TEST_TIMEOUT)
{
    struct repo r;
    find_repo(&r);
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/examples/busfs.service", r.root);
    char *unit = bus_read_ok(path, NULL);

    const char *v = unit_value(unit, "Type");
    cr_assert(v && strcmp(v, "simple") == 0, "Type=%s, want simple", v ? v : "(none)");
    v = unit_value(unit, "ExecStart");
    cr_assert(v, "no ExecStart=");
    char exec[4096];
    snprintf(exec, sizeof exec, "%s", v);
    cr_assert(strncmp(exec, "/usr/local/bin/busfs ", 21) == 0, "ExecStart=%s", exec);
    cr_assert(has_word(exec, "-f"), "ExecStart without -f (systemd must track the server): %s",
              exec);
    cr_assert(has_word(exec, "--clear-stale"), "ExecStart without --clear-stale: %s", exec);
    cr_assert(strstr(exec, "-o allow_other"), "ExecStart without -o allow_other: %s", exec);
    cr_assert(strstr(exec, "--store /"), "ExecStart without an absolute --store: %s", exec);
    v = unit_value(unit, "KillSignal");
    cr_assert(v && strcmp(v, "SIGTERM") == 0, "KillSignal=%s, want SIGTERM", v ? v : "(none)");
    v = unit_value(unit, "Restart");
    cr_assert(v && strcmp(v, "on-failure") == 0, "Restart=%s", v ? v : "(none)");
    cr_assert(unit_value(unit, "TimeoutStopSec"), "no TimeoutStopSec=");
    v = unit_value(unit, "ExecStopPost");
    cr_assert(v && strstr(v, "fusermount3 -uz "), "ExecStopPost=%s", v ? v : "(none)");
    /* A private mount namespace would hide the mount from everyone else. */
    const char *hiding[] = {
        "PrivateDevices",        "PrivateTmp",           "PrivateMounts",     "PrivateUsers",
        "ProtectSystem",         "ProtectHome",          "DynamicUser",       "ReadWritePaths",
        "ReadOnlyPaths",         "InaccessiblePaths",    "TemporaryFileSystem",
        "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
        "ProtectControlGroups",  "ProtectProc",          NULL,
    };
    for (int i = 0; hiding[i]; i++)
        cr_assert_null(unit_value(unit, hiding[i]), "%s= gives busfs a mount namespace of its own",
                       hiding[i]);

    /* systemd-analyze accepts it, pointed at the binary under test. */
    char copy[PATH_MAX + 32];
    snprintf(copy, sizeof copy, "%s/busfs.service", bus.dir);
    FILE *out = fopen(copy, "w");
    cr_assert(out, "%s: %s", copy, strerror(errno));
    const char *exe = strstr(unit, "\nExecStart=/usr/local/bin/busfs ") + strlen("\nExecStart=");
    fprintf(out, "%.*s%s%s", (int)(exe - unit), unit, bus_bin(),
            exe + strlen("/usr/local/bin/busfs"));
    cr_assert(fclose(out) == 0);
    char *verify[] = {"systemd-analyze", "verify", "--man=no", copy, NULL};
    struct bus_cmd c;
    int status = bus_exec(NULL, verify, 20000, &c);
    if (status == 127)
        cr_log_warn("systemd-analyze is not installed: busfs.service checked statically only");
    else
        cr_assert(status == 0 && !strstr(c.err, "busfs.service"),
                  "systemd-analyze verify: status %d\n%s%s", status, c.out, c.err);
    bus_cmd_free(&c);
    free(unit);
    bus_stop(&bus);
}

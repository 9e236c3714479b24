/*
 * nats.c — the 3-server NATS JetStream cluster of the cluster tests (nats.h).
 *
 * Ports: three free loopback ports per server (client, cluster route, monitor),
 * found by binding port 0 and closing, so parallel tests never share a cluster.
 * Ownership: the group owns its servers (pids, PR_SET_PDEATHSIG so none outlives a
 * test that dies) and its temp dir; nats_stop ends both.
 */
#include "nats.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define HEALTH_WAIT_MS 30000

static const char *server_bin(void)
{
    static const char *const paths[] = {"/usr/bin/nats-server", "/usr/sbin/nats-server",
                                        "/usr/local/bin/nats-server"};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++)
        if (access(paths[i], X_OK) == 0)
            return paths[i];
    return NULL;
}

void nats_require(void)
{
    bus_require_fuse();
    if (server_bin())
        return;
    const char *ci = getenv("CI");
    if (ci && strcmp(ci, "true") == 0)
        cr_assert_fail("nats-server is not installed and CI=true (make deps-test installs it)");
    cr_skip_test("nats-server is not installed (make deps-test installs it)");
}

/* A loopback port free right now, below the kernel's ephemeral range (32768 and up)
 * so that no outgoing connection takes it before the server binds it. */
static int free_port(void)
{
    static unsigned seed;
    if (!seed)
        seed = (unsigned)getpid() ^ (unsigned)bus_now_ms();
    for (int tries = 0; tries < 1000; tries++) {
        int port = 20000 + (int)(rand_r(&seed) % 12000);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        bool ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
        close(fd);
        if (ok)
            return port;
    }
    cr_assert_fail("no free loopback port in 20000..31999");
    return -1;
}

/* GET /healthz?js-enabled-only=true on server i's monitor port answers ok. */
static bool healthy(const struct nats_group *g, int i)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g->http_port[i]),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bool ok = false;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
        static const char req[] = "GET /healthz HTTP/1.0\r\n\r\n";
        char resp[1024];
        size_t n = 0;
        ssize_t r;
        if (write(fd, req, sizeof req - 1) == (ssize_t)(sizeof req - 1)) {
            while (n < sizeof resp - 1 && (r = read(fd, resp + n, sizeof resp - 1 - n)) > 0)
                n += (size_t)r;
            resp[n] = '\0';
            ok = strstr(resp, " 200 ") && strstr(resp, "\"ok\"");
        }
    }
    close(fd);
    return ok;
}

/* Waits until server i is healthy; false when it exited (a port taken meanwhile). */
static bool wait_healthy(struct nats_group *g, int i)
{
    long long end = bus_now_ms() + HEALTH_WAIT_MS;
    while (!healthy(g, i)) {
        int st;
        if (waitpid(g->pid[i], &st, WNOHANG) == g->pid[i]) {
            g->pid[i] = 0;
            return false;
        }
        cr_assert_lt(bus_now_ms(), end, "nats-server %d not healthy within %d ms (%s/n%d.log)",
                     i, HEALTH_WAIT_MS, g->dir, i);
        bus_pause_ms(50);
    }
    return true;
}

static void spawn(struct nats_group *g, int i)
{
    char conf[PATH_MAX + 16], log[PATH_MAX + 16];
    snprintf(conf, sizeof conf, "%.4000s/n%d.conf", g->dir, i);
    snprintf(log, sizeof log, "%.4000s/n%d.log", g->dir, i);
    const char *bin = server_bin();
    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        int null = open("/dev/null", O_RDONLY);
        if (fd < 0 || null < 0)
            _exit(127);
        dup2(null, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        bus_close_fds_from(3);
        execl(bin, bin, "-c", conf, (char *)NULL);
        _exit(127);
    }
    g->pid[i] = pid;
}

static bool try_start(struct nats_group *g);

void nats_start(struct nats_group *g, bool edge)
{
    nats_require();
    memset(g, 0, sizeof *g);
    g->n = NATS_SERVERS + (edge ? 1 : 0);
    char tmpl[] = "/tmp/busfs-nats-XXXXXX";
    cr_assert(mkdtemp(tmpl), "mkdtemp: %s", strerror(errno));
    snprintf(g->dir, sizeof g->dir, "%s", tmpl);
    /* Another test may take a port between the choice and the bind: choose again. */
    for (g->attempt = 0; g->attempt < 5; g->attempt++) {
        if (try_start(g))
            return;
        for (int i = 0; i < g->n; i++)
            nats_kill9(g, i);
    }
    cr_assert_fail("the nats-server cluster did not start in 5 attempts (see %s)", g->dir);
}

static bool try_start(struct nats_group *g)
{
    for (int i = 0; i < g->n; i++) {
        g->client_port[i] = free_port();
        g->cluster_port[i] = free_port();
        g->http_port[i] = free_port();
    }
    size_t off = 0;
    g->urls[0] = '\0';
    for (int i = 0; i < NATS_SERVERS; i++)
        off += (size_t)snprintf(g->urls + off, sizeof g->urls - off, "%snats://127.0.0.1:%d",
                                i ? "," : "", g->client_port[i]);
    for (int i = 0; i < g->n; i++) {
        char path[PATH_MAX + 16];
        snprintf(path, sizeof path, "%.4000s/n%d.conf", g->dir, i);
        FILE *f = fopen(path, "w");
        cr_assert_not_null(f, "%s: %s", path, strerror(errno));
        fprintf(f, "server_name: n%d\nlisten: 127.0.0.1:%d\nhttp: 127.0.0.1:%d\n", i,
                g->client_port[i], g->http_port[i]);
        if (i < NATS_SERVERS)
            fprintf(f, "jetstream { store_dir: \"%s/js%d-%d\" }\n", g->dir, i, g->attempt);
        fprintf(f, "cluster {\n  name: busfs-test\n  listen: 127.0.0.1:%d\n  routes: [",
                g->cluster_port[i]);
        for (int j = 0; j < NATS_SERVERS; j++)
            fprintf(f, "%snats-route://127.0.0.1:%d", j ? ", " : "", g->cluster_port[j]);
        fprintf(f, "]\n}\n");
        fclose(f);
    }
    for (int i = 0; i < g->n; i++)
        spawn(g, i);
    bool ok = true;
    for (int i = 0; i < g->n; i++)
        ok = wait_healthy(g, i) && ok;
    return ok;
}

void nats_restart(struct nats_group *g, int i)
{
    cr_assert_eq(g->pid[i], 0, "nats-server %d is still running", i);
    spawn(g, i);
    cr_assert(wait_healthy(g, i), "nats-server %d exited after a restart (see %s/n%d.log)", i,
              g->dir, i);
}

void nats_kill9(struct nats_group *g, int i)
{
    if (!g->pid[i])
        return;
    kill(g->pid[i], SIGKILL);
    waitpid(g->pid[i], NULL, 0);
    g->pid[i] = 0;
}

const char *nats_url(const struct nats_group *g, int i)
{
    static char url[4][64];
    static int k;
    char *out = url[k++ % 4];
    snprintf(out, 64, "nats://127.0.0.1:%d", g->client_port[i]);
    return out;
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    return type == FTW_DP ? rmdir(path) : unlink(path);
}

void nats_stop(struct nats_group *g)
{
    for (int i = 0; i < g->n; i++)
        if (g->pid[i])
            kill(g->pid[i], SIGTERM);
    for (int i = 0; i < g->n; i++) {
        if (!g->pid[i])
            continue;
        int st;
        if (bus_waitpid_deadline(g->pid[i], &st, 5000) != g->pid[i]) {
            kill(g->pid[i], SIGKILL);
            waitpid(g->pid[i], NULL, 0);
        }
        g->pid[i] = 0;
    }
    if (g->dir[0])
        nftw(g->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    g->dir[0] = '\0';
}

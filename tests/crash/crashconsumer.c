/*
 * crashconsumer.c — one consumer process of the crash loop (see crashloop.h):
 * goes round the agents, claims one message at a time from `agents/A/claim`
 * (O_NONBLOCK: EAGAIN means nothing pending there), then
 *   acks it by `rm inflight/F` (about half) or `echo "ack MSG TOKEN" > ctl`,
 *   naks it back with `echo "nak MSG TOKEN" > ctl` (3 in 100), or
 *   walks away from it (3 in 100), so that its lease ends and it comes back,
 * and logs each claim to logs/c<i>.log.
 *
 * Like a writer, a consumer is never killed; the server under it is. An ack
 * that fails (ENOTCONN from a dead server, ENOENT from the bare mountpoint) is
 * logged as failed and not retried: it may have been committed before the
 * reply died, which the checker allows (the message is then in no inbox); if
 * it was not, the lease ends and the message is claimed again.
 *
 * Ownership: the process owns its log fd; each claim, ctl and inflight file
 * is opened and closed within one step. It writes only its own slot of the
 * shared page.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "crashloop.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const struct crash_config *cfg;
static const struct crash_paths *paths;

/* One line per claim in the consumer's log, written after the step that
 * followed it:
 *   OUTCOME AGENT NAME WRITER ID SEQ TOKEN DELIVERY ERRNO
 * OUTCOME k acked (success), f ack failed, n nak'd, x nak failed, a walked
 * away, m the claimed file was not what SPEC §10 says (NAME then holds '-');
 * AGENT the inbox's agent index; NAME the message's inbox file name
 * (<delivery number>-<msg_id>.json); WRITER and ID its identity w<W>-<ID>
 * (from = a<W>); SEQ its sequence; TOKEN and DELIVERY from its lease. */
struct consumer {
    int index;
    uint64_t rng;
    int log_fd;
    struct crash_writer_stats *stats;
    char buf[1 << 16];
};

static void note_errno(struct consumer *c, int err)
{
    atomic_fetch_add(&c->stats->failed_ops, 1);
    atomic_fetch_add(&c->stats->errno_count[err > 0 && err < CRASH_ERRNO_SLOTS ? err : 0], 1);
}

static void log_claim(struct consumer *c, char outcome, int agent, const char *name, int writer,
                      long long id, long long seq, long long token, long long delivery, int err)
{
    char line[512];
    int len = snprintf(line, sizeof line, "%c %d %s %d %lld %lld %lld %lld %d\n", outcome, agent,
                       name, writer, id, seq, token, delivery, err);
    if (len <= 0 || len >= (int)sizeof line || write(c->log_fd, line, (size_t)len) != len) {
        fprintf(stderr, "crashloop: consumer %d cannot write its log: %s\n", c->index,
                strerror(errno));
        _exit(3);
    }
}

/* The whole content of one open of `claim`: > 0 bytes, 0 when nothing is
 * pending (EAGAIN) or the agent is draining (end of file), -1 with errno. */
static ssize_t claim_one(struct consumer *c, int agent)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/agents/a%d/claim", paths->mnt, agent);
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, c->buf + n, sizeof c->buf - 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN && n == 0) {
            close(fd);
            return 0;
        }
        if (r < 0) {
            int err = errno;
            close(fd);
            errno = err;
            return -1;
        }
        if (r == 0 || n + (size_t)r >= sizeof c->buf - 1) {
            n += (size_t)r;
            break;
        }
        n += (size_t)r;
    }
    close(fd);
    c->buf[n] = '\0';
    return (ssize_t)n;
}

/* Writes one line to agents/a<agent>/ctl; 0 or an errno. */
static int ctl_command(struct consumer *c, int agent, const char *line)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/agents/a%d/ctl", paths->mnt, agent);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    size_t len = strlen(line);
    atomic_store(&c->stats->in_commit, 1);
    ssize_t n = write(fd, line, len);
    int err = n == (ssize_t)len ? 0 : n < 0 ? errno : EIO;
    atomic_store(&c->stats->in_commit, 0);
    if (close(fd) != 0 && !err)
        err = errno;
    return err;
}

/* What the checker needs from a claimed envelope; false when it is not the
 * envelope plus "lease" that SPEC §10 describes. */
struct claimed {
    char name[256];  /* <delivery number>-<msg_id>.json */
    char file[300];  /* inflight/<delivery number>-<msg_id>.<token>.json */
    char msg_id[96];
    int writer;
    long long id, seq, token, delivery;
};

static bool parse_claim(const char *text, struct claimed *m)
{
    json_t *root = json_loads(text, 0, NULL);
    json_t *lease = json_object_get(root, "lease");
    const char *msg_id = json_string_value(json_object_get(root, "msg_id"));
    const char *file = json_string_value(json_object_get(lease, "file"));
    const char *ident = json_string_value(json_object_get(root, "correlation_id"));
    if (!ident)
        ident = json_string_value(json_object_get(root, "payload"));
    json_t *seq = json_object_get(root, "sequence");
    json_t *token = json_object_get(lease, "token");
    json_t *delivery = json_object_get(lease, "delivery");
    unsigned long long id = 0;
    int used = 0;
    bool ok = msg_id && file && ident && json_is_integer(seq) && json_is_integer(token) &&
              json_is_integer(delivery) && strlen(msg_id) < sizeof m->msg_id &&
              strlen(file) < sizeof m->file && strncmp(file, "inflight/", 9) == 0 &&
              sscanf(ident, "w%d-%llu%n", &m->writer, &id, &used) == 2 &&
              (ident[used] == '\0' || ident[used] == ' ');
    if (ok) {
        snprintf(m->msg_id, sizeof m->msg_id, "%s", msg_id);
        snprintf(m->file, sizeof m->file, "%s", file);
        m->id = (long long)id;
        m->seq = (long long)json_integer_value(seq);
        m->token = (long long)json_integer_value(token);
        m->delivery = (long long)json_integer_value(delivery);
        /* inflight/<number>-<msg_id>.<token>.json names inbox/<number>-<msg_id>.json */
        char tail[64];
        snprintf(tail, sizeof tail, ".%lld.json", m->token);
        const char *base = file + 9;
        size_t bl = strlen(base), tl = strlen(tail), il = strlen(msg_id);
        ok = bl == 20 + 1 + il + tl && base[20] == '-' && strncmp(base + 21, msg_id, il) == 0 &&
             strcmp(base + bl - tl, tail) == 0;
        if (ok)
            snprintf(m->name, sizeof m->name, "%.*s.json", (int)(bl - tl), base);
    }
    json_decref(root);
    return ok;
}

/* One claim from agent a<agent> and what follows it. Returns false when there
 * was nothing to claim there (or the claim failed). */
static bool consume_one(struct consumer *c, int agent)
{
    ssize_t n = claim_one(c, agent);
    if (n < 0)
        note_errno(c, errno);
    if (n <= 0)
        return false;
    atomic_fetch_add(&c->stats->ok_ops, 1);
    struct claimed m;
    if (!parse_claim(c->buf, &m)) {
        log_claim(c, 'm', agent, "-", -1, -1, -1, -1, -1, 0);
        return true;
    }
    int r = (int)(crash_rnd_next(&c->rng) % 100);
    char line[256];
    char outcome;
    int err = 0;
    if (r < 3) {
        outcome = 'a';
    } else if (r < 6) {
        snprintf(line, sizeof line, "nak %s %lld\n", m.msg_id, m.token);
        err = ctl_command(c, agent, line);
        outcome = err ? 'x' : 'n';
    } else if (r < 53) {
        char path[PATH_MAX + 400];
        snprintf(path, sizeof path, "%s/agents/a%d/%s", paths->mnt, agent, m.file);
        atomic_store(&c->stats->in_commit, 1);
        err = unlink(path) == 0 ? 0 : errno;
        atomic_store(&c->stats->in_commit, 0);
        outcome = err ? 'f' : 'k';
    } else {
        snprintf(line, sizeof line, "ack %s %lld\n", m.msg_id, m.token);
        err = ctl_command(c, agent, line);
        outcome = err ? 'f' : 'k';
    }
    if (err)
        note_errno(c, err);
    else if (outcome == 'k')
        atomic_fetch_add(&c->stats->ok_messages, 1);
    log_claim(c, outcome, agent, m.name, m.writer, m.id, m.seq, m.token, m.delivery, err);
    return true;
}

void crash_consumer_main(int index, const struct crash_config *config,
                         const struct crash_paths *p, struct crash_shared *shared)
{
    cfg = config;
    paths = p;
    static struct consumer c;
    c.index = index;
    c.rng = crash_rnd_seed(cfg->seed, 1000 + (uint64_t)index);
    c.stats = &shared->c[index];
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/c%d.log", paths->logs, index);
    c.log_fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
    if (c.log_fd < 0) {
        fprintf(stderr, "crashloop: %s: %s\n", path, strerror(errno));
        _exit(3);
    }
    int agent = index % cfg->agents, empty = 0;
    while (!atomic_load(&shared->stop)) {
        long long failed_before = atomic_load(&c.stats->failed_ops);
        if (consume_one(&c, agent))
            empty = 0;
        else
            empty++;
        agent = (agent + 1) % cfg->agents;
        /* Nothing anywhere, or the server is down: do not spin on the two cores. */
        if (empty >= cfg->agents || atomic_load(&c.stats->failed_ops) != failed_before) {
            crash_pause_ms(1 + (long)(crash_rnd_next(&c.rng) % 4));
            empty = 0;
        }
    }
    close(c.log_fd);
    _exit(0);
}

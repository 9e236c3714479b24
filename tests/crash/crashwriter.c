/*
 * crashwriter.c — one writer process of the crash loop (see crashloop.h):
 * sends without pause as agent a<i> — outbox/B, several records per write to
 * `send`, now and then outbox/all — and logs every message it gave an
 * identity, recorded or failed, to logs/w<i>.log.
 *
 * The writer is never killed; the server under it is. A send that fails
 * (ENOTCONN from a dead server's connection, ENOENT from the bare mountpoint
 * while the server is down) is logged as failed with the step that failed,
 * and the writer goes on with new identities: a retry of the same one could
 * be present twice for good reasons (delivered, but the reply was lost).
 *
 * Ownership: the process owns its log fd and the `send` fd it keeps open
 * between batches (reopened after a failure: an fd of a dead server's mount
 * only ever gives ENOTCONN). It writes only its own slot of the shared page.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "crashloop.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const struct crash_config *cfg;
static const struct crash_paths *paths;

/* One line per message in the writer's log, written after the operation:
 * KIND N TO OP STEP ERRNO
 *   KIND O (outbox/B), B (outbox/all), S (a `send` record); N the identity
 *   number (payload or correlation_id "w<i>-<N>"); TO the agent index or -1
 *   (all); OP the writer's operation number (a `send` write is one OP);
 *   STEP '-' (recorded: the send returned success) or the step that failed:
 *   'w' write() (outbox: nothing committed; send: the commit point), 'c'
 *   close() (outbox: the commit point); ERRNO 0 or the errno. */
struct writer {
    int index;
    char self[16];
    uint64_t rng;
    int log_fd;
    int send_fd;
    unsigned long long next_id; /* identities w<i>-<N>: never reused */
    unsigned long long op;
    struct crash_writer_stats *stats;
    char body[1 << 16];
    char lines[1 << 14];
    size_t lines_len;
    char pad[4096];
};

static void note_errno(struct writer *w, int err)
{
    atomic_fetch_add(&w->stats->failed_ops, 1);
    atomic_fetch_add(&w->stats->errno_count[err > 0 && err < CRASH_ERRNO_SLOTS ? err : 0], 1);
}

static void log_line(struct writer *w, char kind, unsigned long long id, int to, char step,
                     int err)
{
    w->lines_len += (size_t)snprintf(w->lines + w->lines_len, sizeof w->lines - w->lines_len,
                                     "%c %llu %d %llu %c %d\n", kind, id, to, w->op, step, err);
}

static void log_flush(struct writer *w)
{
    size_t off = 0;
    while (off < w->lines_len) {
        ssize_t n = write(w->log_fd, w->lines + off, w->lines_len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            fprintf(stderr, "crashloop: writer %d cannot write its log: %s\n", w->index,
                    strerror(errno));
            _exit(3);
        }
        off += (size_t)n;
    }
    w->lines_len = 0;
}

static int other_agent(struct writer *w)
{
    int to = (int)(crash_rnd_next(&w->rng) % (uint64_t)(cfg->agents - 1));
    return to >= w->index ? to + 1 : to;
}

/* open(O_CREAT|O_WRONLY|O_TRUNC) + write + close of outbox/B (to CRASH_ALL: all). */
static void send_outbox(struct writer *w, int to)
{
    char path[PATH_MAX + 64];
    char name[16];
    if (to == CRASH_ALL)
        snprintf(name, sizeof name, "all");
    else
        snprintf(name, sizeof name, "a%d", to);
    snprintf(path, sizeof path, "%s/agents/%s/outbox/%s", paths->mnt, w->self, name);
    int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        note_errno(w, errno); /* nothing of this message exists yet: no identity */
        return;
    }
    unsigned long long id = w->next_id++;
    int len = snprintf(w->body, sizeof w->body, "w%d-%llu%s\n", w->index, id, w->pad);
    char kind = to == CRASH_ALL ? 'B' : 'O';
    ssize_t n = write(fd, w->body, (size_t)len);
    if (n != len) {
        int err = n < 0 ? errno : EIO;
        close(fd);
        note_errno(w, err);
        log_line(w, kind, id, to, 'w', err);
        return;
    }
    atomic_store(&w->stats->in_commit, 1);
    int closed = close(fd);
    int close_err = errno;
    atomic_store(&w->stats->in_commit, 0);
    if (closed != 0) {
        int err = close_err;
        note_errno(w, err);
        log_line(w, kind, id, to, 'c', err);
        return;
    }
    log_line(w, kind, id, to, '-', 0);
    atomic_fetch_add(&w->stats->ok_ops, 1);
    atomic_fetch_add(&w->stats->ok_messages, 1);
}

/* Several records in one write() to `send`, each with its own correlation_id.
 * The fd stays open across operations (and is reopened after a failure: an fd
 * of a dead server's mount only gives ENOTCONN). */
static void send_batch(struct writer *w)
{
    if (w->send_fd < 0) {
        char path[PATH_MAX + 64];
        snprintf(path, sizeof path, "%s/agents/%s/send", paths->mnt, w->self);
        w->send_fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
        if (w->send_fd < 0) {
            note_errno(w, errno);
            return;
        }
    }
    int records = 2 + (int)(crash_rnd_next(&w->rng) % (uint64_t)(cfg->batch_max - 1));
    int fit = (int)(sizeof w->body / (160 + strlen(w->pad)));
    if (records > fit)
        records = fit;
    unsigned long long first = w->next_id;
    int to[512];
    size_t len = 0;
    for (int r = 0; r < records; r++) {
        to[r] = crash_rnd_next(&w->rng) % 32 == 0 ? CRASH_ALL : other_agent(w);
        char name[16];
        if (to[r] == CRASH_ALL)
            snprintf(name, sizeof name, "all");
        else
            snprintf(name, sizeof name, "a%d", to[r]);
        unsigned long long id = w->next_id++;
        len += (size_t)snprintf(w->body + len, sizeof w->body - len,
                                "{\"to\":\"%s\",\"payload\":\"w%d-%llu%s\","
                                "\"correlation_id\":\"w%d-%llu\"}\n",
                                name, w->index, id, w->pad, w->index, id);
    }
    atomic_store(&w->stats->in_commit, 1);
    ssize_t n = write(w->send_fd, w->body, len);
    int write_err = errno;
    atomic_store(&w->stats->in_commit, 0);
    char step = '-';
    int err = 0;
    if (n != (ssize_t)len) {
        step = 'w';
        err = n < 0 ? write_err : EIO;
        note_errno(w, err);
        close(w->send_fd);
        w->send_fd = -1;
    } else {
        atomic_fetch_add(&w->stats->ok_ops, 1);
        atomic_fetch_add(&w->stats->ok_messages, records);
    }
    for (int r = 0; r < records; r++)
        log_line(w, 'S', first + (unsigned long long)r, to[r], step, err);
    /* Now and then a fresh open file, so opening `send` is exercised too. */
    if (w->send_fd >= 0 && crash_rnd_next(&w->rng) % 64 == 0) {
        close(w->send_fd);
        w->send_fd = -1;
    }
}

void crash_writer_main(int index, const struct crash_config *config,
                       const struct crash_paths *p, struct crash_shared *shared)
{
    cfg = config;
    paths = p;
    static struct writer w;
    w.index = index;
    snprintf(w.self, sizeof w.self, "a%d", index);
    w.rng = crash_rnd_seed(cfg->seed, (uint64_t)index + 1);
    w.send_fd = -1;
    w.stats = &shared->w[index];
    int pad = cfg->payload_bytes;
    if (pad > (int)sizeof w.pad - 2)
        pad = (int)sizeof w.pad - 2;
    if (pad > 0) {
        w.pad[0] = ' ';
        memset(w.pad + 1, 'x', (size_t)pad - 1);
        w.pad[pad] = '\0';
    }
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/w%d.log", paths->logs, index);
    w.log_fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
    if (w.log_fd < 0) {
        fprintf(stderr, "crashloop: %s: %s\n", path, strerror(errno));
        _exit(3);
    }
    /* Pacing (--rate): at most per_writer identities a second, measured from a
     * base that moves up when the writer fell behind (the server was down), so
     * a restart is not met by a burst. */
    double per_writer = cfg->rate > 0 ? (double)cfg->rate / cfg->writers : 0;
    long long base_ms = crash_now_ms();
    unsigned long long base_id = 0;
    while (!atomic_load(&shared->stop)) {
        if (per_writer > 0) {
            double allowed = (double)(crash_now_ms() - base_ms) * per_writer / 1000.0;
            double sent = (double)(w.next_id - base_id);
            if (sent > allowed) {
                long ms = (long)((sent - allowed) * 1000.0 / per_writer) + 1;
                crash_pause_ms(ms < 100 ? ms : 100);
                continue;
            }
            if (allowed - sent > per_writer / 5) {
                base_ms = crash_now_ms();
                base_id = w.next_id;
            }
        }
        w.op++;
        long long failed_before = atomic_load(&w.stats->failed_ops);
        int r = (int)(crash_rnd_next(&w.rng) % 100);
        if (r < cfg->pct_outbox)
            send_outbox(&w, other_agent(&w));
        else if (r < cfg->pct_outbox + cfg->pct_send)
            send_batch(&w);
        else
            send_outbox(&w, CRASH_ALL);
        log_flush(&w);
        /* While the server is down, do not spin on the two cores. */
        if (atomic_load(&w.stats->failed_ops) != failed_before)
            crash_pause_ms(1 + (long)(crash_rnd_next(&w.rng) % 4));
    }
    if (w.send_fd >= 0)
        close(w.send_fd);
    close(w.log_fd);
    _exit(0);
}

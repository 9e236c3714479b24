/*
 * crashcheck.c — after the crash loop: hold every inbox against what the
 * writers recorded (see crashloop.h).
 *
 * Each writer's log gives, per identity w<i>-<N>, whether its send returned
 * success ("recorded"), failed (and at which step), or was never tried, its
 * recipient (an agent, or all) and the operation it belonged to (a `send`
 * write carries several). Every inbox is listed and every file read through
 * the mount, a few inboxes at a time on threads (the server has one dispatch
 * thread; the threads only hide the clients' own latency). The checks:
 *
 *   lost               a recorded identity missing from a recipient's inbox
 *   duplicate          an identity twice in one inbox
 *   msg-id-reused      one msg_id counter (store-wide) on two envelopes
 *   sequence           per (from,to), in inbox order: not 1, 2, 3 ... (gapless
 *                      over what is present, recorded or not)
 *   reordered          per (from,to), identities not increasing in inbox order
 *                      (a writer sends one message at a time)
 *   misdelivered       an envelope in an inbox its identity was not sent to
 *   phantom            an identity that was never sent, or sent by another
 *   present-after-failed-write  an outbox message whose write() failed
 *                      (the commit is at close) is present
 *   partial-broadcast, partial-send-write  a commit unit is present in part
 *   malformed          a file that is not one envelope + newline, a name that
 *                      does not carry its msg_id, to/from that do not fit
 *   inbox-depth        ctl's inbox_depth is not the number of files listed
 *   sequence-after-restart  one more message per pair does not take the
 *                      next number
 *   events, events-gap `events` is not one JSON line per event with seq
 *                      increasing by one across every restart
 *
 * With consumers (--consumers), an inbox is checked as its listing plus every
 * message a consumer acked (see merge_acked), so lost, duplicate, sequence and
 * the rest hold across claims too; and
 *   token-reused       one lease token on two claims
 *   delivery-count     a message claimed again without a higher delivery count
 *   lease-never-ended, dead-letter  a lease still out after 3 lease times,
 *                      or a message in dead/
 *   claim-malformed    a claim that is not an envelope with a lease
 *
 * Ownership: the per-writer entry arrays and the per-inbox envelope arrays
 * live until crash_verify returns; reader threads fill only their own inbox.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "crashloop.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* What a writer's log says about one identity. */
struct entry {
    uint64_t seen;     /* recipients whose inbox holds it */
    uint64_t op;       /* the writer's operation number */
    int8_t to;         /* agent index or CRASH_ALL */
    char kind;         /* O, B, S */
    char step;         /* '-' recorded, 'w' or 'c' failed there */
    char state;        /* 0 never sent, 'k' recorded, 'f' failed */
};

struct writer_log {
    struct entry *e;
    size_t n; /* identities 0..n-1 known */
    size_t cap;
};

/* One inbox file, parsed by a reader thread. */
struct envelope {
    char *name;
    char *problem;    /* why it is malformed, or NULL */
    int from;         /* agent index, -1 if not an agent of the run */
    int writer;       /* from the identity, -1 when there is none */
    long long id;     /* N of w<i>-<N>, -1 when there is none */
    long long seq;
    unsigned long long counter; /* the msg_id's store-wide counter */
    char *final_payload;        /* a payload that is not an identity (the final round) */
    bool acked;                 /* from a consumer's log, not the listing (name owned) */
};

struct inbox {
    int agent;
    char *list_error;
    struct envelope *e;
    size_t n;
    size_t listed; /* files ls showed; n also counts acked envelopes merged in */
};

/* One claim from a consumer's log (see crashconsumer.c). */
struct claim {
    char outcome; /* k acked, f ack failed, n nak'd, x nak failed, a walked away */
    int agent;
    int writer;
    int err;
    char *name;
    long long id, seq, token, delivery;
};

static const struct crash_config *cfg;
static const struct crash_paths *paths;

/* ---- the writers' logs ------------------------------------------------- */

static struct entry *entry_at(struct writer_log *log, size_t id)
{
    if (id >= log->cap) {
        size_t cap = log->cap ? log->cap : 4096;
        while (cap <= id)
            cap *= 2;
        struct entry *e = realloc(log->e, cap * sizeof *e);
        if (!e) {
            fprintf(stderr, "crashcheck: out of memory\n");
            exit(2);
        }
        memset(e + log->cap, 0, (cap - log->cap) * sizeof *e);
        log->e = e;
        log->cap = cap;
    }
    if (id >= log->n)
        log->n = id + 1;
    return &log->e[id];
}

static void read_writer_log(int w, struct writer_log *log)
{
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/w%d.log", paths->logs, w);
    FILE *in = fopen(path, "re");
    if (!in) {
        crash_violation("writer-logs", "cannot open %s: %s", path, strerror(errno));
        return;
    }
    char line[256];
    long long lineno = 0;
    while (fgets(line, sizeof line, in)) {
        lineno++;
        char kind, step;
        unsigned long long id, op;
        int to, err;
        if (sscanf(line, "%c %llu %d %llu %c %d", &kind, &id, &to, &op, &step, &err) != 6 ||
            !strchr("OBS", kind) || !strchr("-wc", step) || to < CRASH_ALL ||
            to >= cfg->agents || to == w) {
            crash_violation("writer-logs", "%s:%lld: bad line: %s", path, lineno, line);
            continue;
        }
        struct entry *e = entry_at(log, (size_t)id);
        if (e->state) {
            crash_violation("writer-logs", "%s:%lld: identity w%d-%llu logged twice", path,
                            lineno, w, id);
            continue;
        }
        e->kind = kind;
        e->to = (int8_t)to;
        e->op = op;
        e->step = step;
        e->state = step == '-' ? 'k' : 'f';
    }
    fclose(in);
}

/* ---- reading the inboxes ------------------------------------------------ */

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted names of a directory of the mount (inbox files sort in delivery order). */
static char **list_dir(const char *path, size_t *n, char **error)
{
    *n = 0;
    DIR *d = opendir(path);
    if (!d) {
        if (asprintf(error, "opendir %s: %s", path, strerror(errno)) < 0)
            *error = NULL;
        return NULL;
    }
    size_t cap = 1024;
    char **names = malloc(cap * sizeof *names);
    struct dirent *de;
    errno = 0;
    while (names && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (*n == cap) {
            cap *= 2;
            char **more = realloc(names, cap * sizeof *names);
            if (!more)
                break;
            names = more;
        }
        names[(*n)++] = strdup(de->d_name);
    }
    if (errno && asprintf(error, "readdir %s: %s", path, strerror(errno)) < 0)
        *error = NULL;
    closedir(d);
    if (names)
        qsort(names, *n, sizeof *names, by_name);
    return names;
}

/* Whole file; NULL with errno. */
static char *read_whole(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    size_t cap = 1024, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (n + 1 >= cap) {
            cap *= 2;
            char *more = realloc(buf, cap);
            if (!more)
                break;
            buf = more;
        }
        ssize_t r = read(fd, buf + n, cap - n - 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int err = errno;
            free(buf);
            close(fd);
            errno = err;
            return NULL;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* "MSG-YYYYMMDD-HHMMSS-xxxxxxxx-<20 digits>": the counter, or false. */
static bool msg_id_counter(const char *id, unsigned long long *counter)
{
    static const char shape[] = "MSG-dddddddd-dddddd-hhhhhhhh-dddddddddddddddddddd";
    if (strlen(id) != sizeof shape - 1)
        return false;
    for (size_t k = 0; shape[k]; k++) {
        char c = id[k];
        bool ok = shape[k] == 'd'   ? (c >= '0' && c <= '9')
                  : shape[k] == 'h' ? ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))
                                    : c == shape[k];
        if (!ok)
            return false;
    }
    *counter = strtoull(id + sizeof shape - 21, NULL, 10);
    return true;
}

/* "a<k>" with k an agent of the run, or -1. */
static int agent_index(const char *name)
{
    int k;
    char tail;
    if (!name || sscanf(name, "a%d%c", &k, &tail) != 1 || k < 0 || k >= cfg->agents)
        return -1;
    char back[16];
    snprintf(back, sizeof back, "a%d", k);
    return strcmp(back, name) == 0 ? k : -1;
}

static void set_problem(struct envelope *env, const char *what)
{
    if (!env->problem)
        env->problem = strdup(what);
}

/* Reads and parses one inbox file of agent j into env. */
static void parse_envelope(int j, const char *dir, struct envelope *env)
{
    env->from = env->writer = -1;
    env->id = env->seq = -1;
    char path[PATH_MAX + 256];
    snprintf(path, sizeof path, "%s/%s", dir, env->name);
    size_t len = 0;
    char *text = read_whole(path, &len);
    if (!text) {
        char msg[128];
        snprintf(msg, sizeof msg, "cannot read it: %s", strerror(errno));
        set_problem(env, msg);
        return;
    }
    json_error_t jerr;
    json_t *root = len && text[len - 1] == '\n' ? json_loadb(text, len, 0, &jerr) : NULL;
    if (!json_is_object(root)) {
        set_problem(env, "not one JSON object followed by a newline");
        json_decref(root);
        free(text);
        return;
    }
    const char *msg_id = json_string_value(json_object_get(root, "msg_id"));
    const char *from = json_string_value(json_object_get(root, "from"));
    const char *to = json_string_value(json_object_get(root, "to"));
    json_t *seq = json_object_get(root, "sequence");
    if (!msg_id || !msg_id_counter(msg_id, &env->counter))
        set_problem(env, "no msg_id of the right shape");
    else {
        /* <20-digit delivery number>-<msg_id>.json */
        size_t nl = strlen(env->name), il = strlen(msg_id);
        bool ok = nl == 20 + 1 + il + 5 && env->name[20] == '-' &&
                  strncmp(env->name + 21, msg_id, il) == 0 &&
                  strcmp(env->name + nl - 5, ".json") == 0;
        for (int k = 0; ok && k < 20; k++)
            ok = env->name[k] >= '0' && env->name[k] <= '9';
        if (!ok)
            set_problem(env, "the file name is not <delivery number>-<its msg_id>.json");
    }
    env->from = agent_index(from);
    if (env->from < 0)
        set_problem(env, "from is not an agent of the run");
    if (agent_index(to) != j)
        set_problem(env, "to is not the inbox's agent");
    if (!json_is_integer(seq) || json_integer_value(seq) < 1)
        set_problem(env, "no positive integer sequence");
    else
        env->seq = (long long)json_integer_value(seq);
    /* The identity: the correlation_id of a `send` record, else the payload. */
    const char *ident = json_string_value(json_object_get(root, "correlation_id"));
    if (!ident)
        ident = json_string_value(json_object_get(root, "payload"));
    int w;
    unsigned long long id;
    int used = 0;
    if (ident && sscanf(ident, "w%d-%llu%n", &w, &id, &used) == 2 &&
        (ident[used] == '\0' || ident[used] == ' ')) {
        env->writer = w;
        env->id = (long long)id;
    } else {
        env->final_payload = strdup(ident ? ident : "(no string payload)");
    }
    json_decref(root);
    free(text);
}

struct readers {
    struct inbox *inboxes;
    int count;
    const size_t *first; /* per inbox, read only files from this index on; NULL: all */
    _Atomic int next;
};

static void *reader_main(void *arg)
{
    struct readers *r = arg;
    int k;
    while ((k = atomic_fetch_add(&r->next, 1)) < r->count) {
        struct inbox *in = &r->inboxes[k];
        char dir[PATH_MAX + 64];
        snprintf(dir, sizeof dir, "%s/agents/a%d/inbox", paths->mnt, in->agent);
        size_t n = 0;
        char **names = list_dir(dir, &n, &in->list_error);
        in->n = in->listed = n;
        in->e = calloc(n ? n : 1, sizeof *in->e);
        for (size_t f = 0; f < n; f++) {
            in->e[f].name = names[f];
            if (!r->first || f >= r->first[in->agent])
                parse_envelope(in->agent, dir, &in->e[f]);
        }
        free(names);
    }
    return NULL;
}

/* Lists and reads every inbox (files from index first[agent] on; first NULL:
 * all) on cfg->readers threads. */
static struct inbox *read_inboxes(const size_t *first)
{
    struct readers r = {.count = cfg->agents, .first = first};
    r.inboxes = calloc((size_t)cfg->agents, sizeof *r.inboxes);
    for (int j = 0; j < cfg->agents; j++)
        r.inboxes[j].agent = j;
    int nthreads = cfg->readers < cfg->agents ? cfg->readers : cfg->agents;
    pthread_t threads[CRASH_MAX_AGENTS];
    int started = 0;
    for (int t = 0; t < nthreads; t++)
        if (pthread_create(&threads[t], NULL, reader_main, &r) == 0)
            started++;
    if (started == 0)
        reader_main(&r);
    for (int t = 0; t < started; t++)
        pthread_join(threads[t], NULL);
    return r.inboxes;
}

static void free_inboxes(struct inbox *inboxes)
{
    for (int j = 0; j < cfg->agents; j++) {
        for (size_t f = 0; f < inboxes[j].n; f++) {
            free(inboxes[j].e[f].name);
            free(inboxes[j].e[f].problem);
            free(inboxes[j].e[f].final_payload);
        }
        free(inboxes[j].e);
        free(inboxes[j].list_error);
    }
    free(inboxes);
}

/* ---- the checks -------------------------------------------------------- */

static uint64_t all_agents_mask(void)
{
    return cfg->agents == 64 ? ~0ULL : (1ULL << cfg->agents) - 1;
}

static uint64_t expected_mask(const struct entry *e, int writer)
{
    return e->to == CRASH_ALL ? all_agents_mask() & ~(1ULL << writer) : 1ULL << e->to;
}

static const char *state_name(const struct entry *e)
{
    return e->state == 'k' ? "recorded" : e->step == 'w' ? "failed at write" : "failed at close";
}

struct id_ref {
    unsigned long long counter;
    int agent;
    size_t file;
};

static int by_counter(const void *a, const void *b)
{
    const struct id_ref *x = a, *y = b;
    return x->counter < y->counter ? -1 : x->counter > y->counter;
}

/* ctl's inbox_depth against the listing. */
static void check_depth(int j, size_t listed)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/agents/a%d/ctl", paths->mnt, j);
    size_t len;
    char *text = read_whole(path, &len);
    json_t *ctl = text ? json_loads(text, 0, NULL) : NULL;
    json_t *depth = json_object_get(ctl, "inbox_depth");
    if (!json_is_integer(depth))
        crash_violation("inbox-depth", "a%d/ctl has no inbox_depth: %s", j,
                        text ? text : strerror(errno));
    else if ((size_t)json_integer_value(depth) != listed)
        crash_violation("inbox-depth", "a%d/ctl says inbox_depth %lld, ls lists %zu files", j,
                        (long long)json_integer_value(depth), listed);
    json_decref(ctl);
    free(text);
}

/* Scans every envelope: marks identities seen, checks sequences and order. */
static void scan_inboxes(struct inbox *inboxes, struct writer_log *logs, long long *last_seq,
                         struct crash_result *res)
{
    int K = cfg->agents;
    long long *last_id = malloc((size_t)K * (size_t)K * sizeof *last_id);
    for (int p = 0; p < K * K; p++)
        last_id[p] = -1;
    size_t total = 0;
    for (int j = 0; j < K; j++)
        total += inboxes[j].n;
    struct id_ref *refs = malloc((total ? total : 1) * sizeof *refs);
    size_t nrefs = 0;

    for (int j = 0; j < K; j++) {
        struct inbox *in = &inboxes[j];
        if (in->list_error)
            crash_violation("malformed", "inbox of a%d: %s", j, in->list_error);
        check_depth(j, in->listed);
        for (size_t f = 0; f < in->n; f++) {
            struct envelope *env = &in->e[f];
            res->present++;
            if (env->problem) {
                crash_violation("malformed", "a%d/inbox/%s: %s", j, env->name, env->problem);
                if (env->from < 0 || env->seq < 0)
                    continue;
            }
            refs[nrefs++] = (struct id_ref){env->counter, j, f};
            int from = env->from;
            long long *ls = &last_seq[from * K + j];
            if (env->seq != *ls + 1)
                crash_violation("sequence",
                                "a%d -> a%d: a%d/inbox/%s has sequence %lld after %lld", from, j,
                                j, env->name, env->seq, *ls);
            *ls = env->seq;
            if (env->writer < 0) {
                crash_violation("phantom", "a%d/inbox/%s carries no identity: %s", j, env->name,
                                env->final_payload);
                continue;
            }
            if (env->writer != from || env->writer >= cfg->writers) {
                crash_violation("phantom", "a%d/inbox/%s: identity w%d-%lld but from a%d", j,
                                env->name, env->writer, env->id, from);
                continue;
            }
            struct writer_log *log = &logs[env->writer];
            struct entry *e = (size_t)env->id < log->n ? &log->e[env->id] : NULL;
            if (!e || !e->state) {
                crash_violation("phantom", "a%d/inbox/%s: w%d-%lld was never sent", j,
                                env->name, env->writer, env->id);
                continue;
            }
            if (!(expected_mask(e, env->writer) & (1ULL << j)))
                crash_violation("misdelivered", "a%d/inbox/%s: w%d-%lld was sent to %s%d", j,
                                env->name, env->writer, env->id,
                                e->to == CRASH_ALL ? "all, not to a" : "a",
                                e->to == CRASH_ALL ? env->writer : e->to);
            if (e->seen & (1ULL << j))
                crash_violation("duplicate", "a%d/inbox/%s: w%d-%lld (%s) is in a%d's inbox again",
                                j, env->name, env->writer, env->id, state_name(e), j);
            e->seen |= 1ULL << j;
            long long *li = &last_id[from * K + j];
            if (env->id <= *li)
                crash_violation("reordered", "a%d -> a%d: a%d/inbox/%s (w%d-%lld) after w%d-%lld",
                                from, j, j, env->name, env->writer, env->id, env->writer, *li);
            else
                *li = env->id;
        }
    }

    qsort(refs, nrefs, sizeof *refs, by_counter);
    for (size_t r = 1; r < nrefs; r++)
        if (refs[r].counter == refs[r - 1].counter)
            crash_violation("msg-id-reused", "counter %llu on a%d/inbox/%s and a%d/inbox/%s",
                            refs[r].counter, refs[r - 1].agent,
                            inboxes[refs[r - 1].agent].e[refs[r - 1].file].name, refs[r].agent,
                            inboxes[refs[r].agent].e[refs[r].file].name);
    free(refs);
    free(last_id);
}

/* Every identity of every writer against what was seen. */
static void check_identities(struct writer_log *logs, struct crash_result *res)
{
    for (int w = 0; w < cfg->writers; w++) {
        struct writer_log *log = &logs[w];
        for (size_t id = 0; id < log->n; id++) {
            struct entry *e = &log->e[id];
            if (!e->state)
                continue;
            uint64_t want = expected_mask(e, w);
            int present = __builtin_popcountll(e->seen & want);
            if (e->state == 'k') {
                res->recorded++;
                res->recorded_envelopes += __builtin_popcountll(want);
                uint64_t missing = want & ~e->seen;
                const char *how = e->kind == 'S'   ? "send"
                                  : e->kind == 'B' ? "broadcast"
                                                   : "outbox";
                for (int j = 0; missing && j < cfg->agents; j++)
                    if (missing & (1ULL << j))
                        crash_violation("lost",
                                        "w%d-%zu (%s op %llu, to %s%d, recorded) is not in a%d's "
                                        "inbox",
                                        w, id, how, (unsigned long long)e->op,
                                        e->to == CRASH_ALL ? "all but a" : "a",
                                        e->to == CRASH_ALL ? w : e->to, j);
                continue;
            }
            res->failed_messages++;
            if (!e->seen)
                continue;
            res->unrecorded_ids++;
            res->unrecorded_by_kind[e->kind == 'O' ? 0 : e->kind == 'S' ? 1 : 2]++;
            res->unrecorded_envelopes += __builtin_popcountll(e->seen);
            if (e->kind != 'S' && e->step == 'w')
                crash_violation("present-after-failed-write",
                                "w%d-%zu: its write() to outbox failed, yet it is delivered", w,
                                id);
            if (present != __builtin_popcountll(want))
                crash_violation("partial-broadcast",
                                "w%d-%zu (%s, to all) is in %d of %d inboxes", w, id,
                                state_name(e), present, __builtin_popcountll(want));
        }
        /* A failed `send` write: all of its records or none. */
        for (size_t id = 0; id < log->n;) {
            struct entry *e = &log->e[id];
            size_t end = id + 1;
            while (end < log->n && log->e[end].state && log->e[end].op == e->op &&
                   log->e[end].kind == 'S')
                end++;
            if (e->kind == 'S' && e->state == 'f') {
                int whole = 0, none = 0;
                for (size_t k = id; k < end; k++) {
                    uint64_t want = expected_mask(&log->e[k], w);
                    whole += (log->e[k].seen & want) == want;
                    none += log->e[k].seen == 0;
                }
                if (whole && none)
                    crash_violation("partial-send-write",
                                    "writer %d op %llu (w%d-%zu..w%d-%zu, write() failed): %d "
                                    "records delivered, %d not",
                                    w, (unsigned long long)e->op, w, id, w, end - 1, whole, none);
            }
            id = end;
        }
    }
}

/* ---- the consumers ------------------------------------------------------ */

struct claims {
    struct claim *c;
    size_t n, cap;
};

static void read_consumer_logs(struct claims *all)
{
    for (int i = 0; i < cfg->consumers; i++) {
        char path[PATH_MAX + 16];
        snprintf(path, sizeof path, "%s/c%d.log", paths->logs, i);
        FILE *in = fopen(path, "re");
        if (!in) {
            crash_violation("consumer-logs", "cannot open %s: %s", path, strerror(errno));
            continue;
        }
        char line[512], name[300];
        long long lineno = 0;
        while (fgets(line, sizeof line, in)) {
            lineno++;
            struct claim c = {0};
            if (sscanf(line, "%c %d %299s %d %lld %lld %lld %lld %d", &c.outcome, &c.agent, name,
                       &c.writer, &c.id, &c.seq, &c.token, &c.delivery, &c.err) != 9 ||
                !strchr("kfnxam", c.outcome) || c.agent < 0 || c.agent >= cfg->agents) {
                crash_violation("consumer-logs", "%s:%lld: bad line: %s", path, lineno, line);
                continue;
            }
            if (c.outcome == 'm') {
                crash_violation("claim-malformed", "consumer %d claimed from a%d something that "
                                "is not an envelope with a lease (SPEC 10)", i, c.agent);
                continue;
            }
            if (all->n == all->cap) {
                all->cap = all->cap ? all->cap * 2 : 4096;
                struct claim *more = realloc(all->c, all->cap * sizeof *more);
                if (!more) {
                    fprintf(stderr, "crashcheck: out of memory\n");
                    exit(2);
                }
                all->c = more;
            }
            c.name = strdup(name);
            all->c[all->n++] = c;
        }
        fclose(in);
    }
}

static int by_token(const void *a, const void *b)
{
    const struct claim *x = a, *y = b;
    return x->token < y->token ? -1 : x->token > y->token;
}

static int by_agent_name_token(const void *a, const void *b)
{
    const struct claim *x = a, *y = b;
    if (x->agent != y->agent)
        return x->agent - y->agent;
    int c = strcmp(x->name, y->name);
    return c ? c : by_token(a, b);
}

/* Tokens are fencing tokens: never handed out twice. A message claimed again
 * has a higher delivery count each time (a claim whose reply died with the
 * server is not in any log, so counts may skip). Sorts the claims by agent,
 * name and token. */
static void check_tokens(struct claims *all, struct crash_result *res)
{
    qsort(all->c, all->n, sizeof *all->c, by_token);
    for (size_t k = 1; k < all->n; k++)
        if (all->c[k].token == all->c[k - 1].token)
            crash_violation("token-reused", "token %lld leased a%d/%s and a%d/%s",
                            all->c[k].token, all->c[k - 1].agent, all->c[k - 1].name,
                            all->c[k].agent, all->c[k].name);
    qsort(all->c, all->n, sizeof *all->c, by_agent_name_token);
    for (size_t k = 1; k < all->n; k++) {
        struct claim *a = &all->c[k - 1], *b = &all->c[k];
        if (a->agent != b->agent || strcmp(a->name, b->name) != 0)
            continue;
        res->claimed_again++;
        if (b->delivery <= a->delivery)
            crash_violation("delivery-count", "a%d/%s: token %lld has delivery %lld after token "
                            "%lld had %lld", b->agent, b->name, b->token, b->delivery, a->token,
                            a->delivery);
    }
}

/* An ack that failed because the server died under it may still have been
 * committed. */
static bool ack_maybe_took_effect(const struct claim *c)
{
    return c->outcome == 'f' && (c->err == ENOTCONN || c->err == ECONNABORTED || c->err == EIO);
}

static bool listed_in(const struct inbox *in, const char *name)
{
    size_t lo = 0, hi = in->listed;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(in->e[mid].name, name);
        if (c == 0)
            return true;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

static int by_envelope_name(const void *a, const void *b)
{
    return strcmp(((const struct envelope *)a)->name, ((const struct envelope *)b)->name);
}

/* Every inbox as if no consumer had been there: the listing plus each message
 * a consumer acked with success, plus each whose ack failed with the server
 * and that is neither listed nor acked elsewhere (the ack was committed, its
 * reply lost), in delivery order. The claims are sorted by agent and name. */
static struct inbox *merge_acked(const struct inbox *listing, const struct claims *all,
                                 struct crash_result *res)
{
    struct inbox *merged = calloc((size_t)cfg->agents, sizeof *merged);
    size_t k = 0;
    for (int j = 0; j < cfg->agents; j++) {
        const struct inbox *in = &listing[j];
        size_t first = k;
        while (k < all->n && all->c[k].agent == j)
            k++;
        merged[j] = (struct inbox){.agent = j, .list_error = in->list_error, .listed = in->listed};
        merged[j].e = calloc(in->n + (k - first) + 1, sizeof *merged[j].e);
        memcpy(merged[j].e, in->e, in->n * sizeof *in->e);
        merged[j].n = in->n;
        for (size_t c = first; c < k; c++) {
            const struct claim *cl = &all->c[c];
            bool acked = cl->outcome == 'k';
            if (!acked && ack_maybe_took_effect(cl)) {
                /* Only when no claim of this name was acked and it is not listed. */
                bool elsewhere = listed_in(in, cl->name);
                for (size_t o = first; o < k && !elsewhere; o++)
                    elsewhere = strcmp(all->c[o].name, cl->name) == 0 &&
                                (all->c[o].outcome == 'k' || (o < c && ack_maybe_took_effect(
                                                                           &all->c[o])));
                if (elsewhere)
                    continue;
                res->acked_unrecorded++;
            } else if (!acked) {
                continue;
            } else {
                res->acked++;
            }
            struct envelope *env = &merged[j].e[merged[j].n++];
            *env = (struct envelope){.name = strdup(cl->name), .acked = true, .from = cl->writer,
                                     .writer = cl->writer, .id = cl->id, .seq = cl->seq};
            size_t nl = strlen(cl->name);
            char msg_id[256] = "";
            if (nl > 26)
                snprintf(msg_id, sizeof msg_id, "%.*s", (int)(nl - 26), cl->name + 21);
            if (!msg_id_counter(msg_id, &env->counter))
                env->problem = strdup("a consumer acked a file whose name has no msg_id");
        }
        qsort(merged[j].e, merged[j].n, sizeof *merged[j].e, by_envelope_name);
    }
    return merged;
}

static void free_merged(struct inbox *merged)
{
    for (int j = 0; j < cfg->agents; j++) {
        for (size_t f = 0; f < merged[j].n; f++)
            if (merged[j].e[f].acked) {
                free(merged[j].e[f].name);
                free(merged[j].e[f].problem);
            }
        free(merged[j].e);
    }
    free(merged);
}

/* A number field of agents/a<j>/ctl, -1 when it cannot be read. */
static long long ctl_field(int j, const char *field)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/agents/a%d/ctl", paths->mnt, j);
    size_t len;
    char *text = read_whole(path, &len);
    json_t *ctl = text ? json_loads(text, 0, NULL) : NULL;
    json_t *v = json_object_get(ctl, field);
    long long n = json_is_integer(v) ? (long long)json_integer_value(v) : -1;
    json_decref(ctl);
    free(text);
    return n;
}

/* Every lease a consumer walked away from (or lost with the server) ends
 * within --lease and the message is pending again; nothing became a dead
 * letter (--max-deliver is out of reach). */
static void wait_for_leases(void)
{
    long long deadline = crash_now_ms() + 1000 * (3 * atoll(cfg->lease) + 10);
    for (int j = 0; j < cfg->agents; j++) {
        long long leased;
        while ((leased = ctl_field(j, "leased")) != 0 && crash_now_ms() < deadline)
            crash_pause_ms(50);
        if (leased != 0)
            crash_violation("lease-never-ended", "a%d/ctl still says leased %lld, %s s leases",
                            j, leased, cfg->lease);
        long long dead = ctl_field(j, "dead");
        if (dead != 0)
            crash_violation("dead-letter", "a%d/ctl says dead %lld", j, dead);
    }
}

/* `events`: one JSON line per event, seq increasing by one from the first line
 * kept to the last, across every kill -9 of the run. */
static void check_events(struct crash_result *res)
{
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/events", paths->mnt);
    size_t len = 0;
    char *text = read_whole(path, &len);
    if (!text) {
        crash_violation("events", "cannot read %s: %s", path, strerror(errno));
        return;
    }
    long long prev = -1;
    for (char *line = text; line < text + len;) {
        char *nl = memchr(line, '\n', (size_t)(text + len - line));
        if (!nl) {
            crash_violation("events", "the last line has no newline");
            break;
        }
        *nl = '\0';
        long long seq;
        int used = 0;
        if (sscanf(line, "{\"seq\":%lld,%n", &seq, &used) != 1 || used == 0) {
            crash_violation("events", "line %lld does not start with its seq: %.80s",
                            res->events + 1, line);
        } else {
            if (prev >= 0 && seq != prev + 1)
                crash_violation("events-gap", "seq %lld follows %lld", seq, prev);
            prev = seq;
        }
        res->events++;
        line = nl + 1;
    }
    free(text);
}

/* One more message from every writer to every other agent: each must take the
 * next sequence number of its pair (the counters survived every restart). */
static void check_final_round(struct inbox *before, const long long *last_seq)
{
    int K = cfg->agents;
    for (int i = 0; i < cfg->writers; i++)
        for (int j = 0; j < K; j++) {
            if (j == i)
                continue;
            char path[PATH_MAX + 64];
            snprintf(path, sizeof path, "%s/agents/a%d/outbox/a%d", paths->mnt, i, j);
            char body[32];
            int len = snprintf(body, sizeof body, "final-a%d\n", i);
            int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0644);
            bool ok = fd >= 0 && write(fd, body, (size_t)len) == len;
            int err = errno;
            if (fd >= 0 && close(fd) != 0 && ok) {
                ok = false;
                err = errno;
            }
            if (!ok)
                crash_violation("sequence-after-restart", "send a%d -> a%d after the run: %s", i,
                                j, strerror(err));
        }
    size_t first[CRASH_MAX_AGENTS] = {0};
    for (int j = 0; j < K; j++)
        first[j] = before[j].n;
    struct inbox *after = read_inboxes(first);
    for (int j = 0; j < K; j++) {
        size_t want = (size_t)cfg->writers - (j < cfg->writers);
        if (after[j].n != before[j].n + want) {
            crash_violation("sequence-after-restart", "a%d's inbox went from %zu to %zu files, "
                            "want %zu more", j, before[j].n, after[j].n, want);
            continue;
        }
        for (size_t f = 0; f < before[j].n; f++)
            if (strcmp(before[j].e[f].name, after[j].e[f].name) != 0) {
                crash_violation("sequence-after-restart", "a%d/inbox changed: %s became %s", j,
                                before[j].e[f].name, after[j].e[f].name);
                break;
            }
        for (size_t f = before[j].n; f < after[j].n; f++) {
            struct envelope *env = &after[j].e[f];
            int i = env->from;
            char expect[32];
            snprintf(expect, sizeof expect, "final-a%d", i);
            if (env->problem || i < 0 || !env->final_payload ||
                strcmp(env->final_payload, expect) != 0) {
                crash_violation("sequence-after-restart", "a%d/inbox/%s is not a final message: %s",
                                j, env->name, env->problem ? env->problem : "(payload)");
                continue;
            }
            if (env->seq != last_seq[i * K + j] + 1)
                crash_violation("sequence-after-restart",
                                "a%d -> a%d after the run: sequence %lld, want %lld", i, j,
                                env->seq, last_seq[i * K + j] + 1);
        }
    }
    free_inboxes(after);
}

long long crash_verify(const struct crash_config *config, const struct crash_paths *p,
                       struct crash_result *res)
{
    cfg = config;
    paths = p;
    long long before = crash_violation_count();
    struct writer_log *logs = calloc((size_t)cfg->writers, sizeof *logs);
    for (int w = 0; w < cfg->writers; w++)
        read_writer_log(w, &logs[w]);

    struct claims claims = {0};
    if (cfg->consumers) {
        read_consumer_logs(&claims);
        check_tokens(&claims, res);
        wait_for_leases();
    }

    long long t0 = crash_now_ms();
    struct inbox *inboxes = read_inboxes(NULL);
    size_t files = 0;
    for (int j = 0; j < cfg->agents; j++)
        files += inboxes[j].n;
    printf("  read %zu inbox files in %.1f s\n", files, (double)(crash_now_ms() - t0) / 1000.0);

    int K = cfg->agents;
    long long *last_seq = calloc((size_t)K * (size_t)K, sizeof *last_seq);
    struct inbox *merged = cfg->consumers ? merge_acked(inboxes, &claims, res) : NULL;
    scan_inboxes(merged ? merged : inboxes, logs, last_seq, res);
    check_identities(logs, res);
    check_events(res);
    check_final_round(inboxes, last_seq);

    free(last_seq);
    if (merged)
        free_merged(merged);
    free_inboxes(inboxes);
    for (size_t k = 0; k < claims.n; k++)
        free(claims.c[k].name);
    free(claims.c);
    for (int w = 0; w < cfg->writers; w++)
        free(logs[w].e);
    free(logs);
    return crash_violation_count() - before;
}

/*
 * harness_bus.c — reading the bus (see harness.h): whole files, writes with
 * the errno of the step that failed, sorted listings, JSON and JSONL files,
 * and the checks every envelope must pass (SPEC §3).
 */
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- files ----------------------------------------------------------- */

char *bus_read(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    size_t cap = 4096, n = 0;
    char *data = malloc(cap);
    for (;;) {
        if (n + 1 >= cap) {
            cap *= 2;
            char *grown = realloc(data, cap);
            if (!grown) {
                free(data);
                close(fd);
                errno = ENOMEM;
                return NULL;
            }
            data = grown;
        }
        ssize_t got = read(fd, data + n, cap - n - 1);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            int e = errno;
            free(data);
            close(fd);
            errno = e;
            return NULL;
        }
        if (got == 0)
            break;
        n += (size_t)got;
    }
    if (close(fd) < 0) {
        int e = errno;
        free(data);
        errno = e;
        return NULL;
    }
    data[n] = '\0';
    if (len)
        *len = n;
    return data;
}

char *bus_read_ok(const char *path, size_t *len)
{
    char *data = bus_read(path, len);
    cr_assert(data, "cannot read %s: %s", path, strerror(errno));
    return data;
}

int bus_write_ex(const char *path, int flags, const void *data, size_t len, enum bus_step *failed)
{
    enum bus_step step = BUS_STEP_OPEN;
    int err = 0;
    int fd = open(path, flags | O_CLOEXEC, 0644);
    if (fd < 0) {
        err = errno;
        goto out;
    }
    step = BUS_STEP_WRITE;
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t n = write(fd, p, left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            err = n < 0 ? errno : EIO;
            close(fd);
            goto out;
        }
        p += n;
        left -= (size_t)n;
    }
    step = BUS_STEP_CLOSE;
    if (close(fd) < 0)
        err = errno;
out:
    if (failed)
        *failed = err ? step : BUS_STEP_NONE;
    return err;
}

int bus_write(const char *path, const char *text)
{
    return bus_write_ex(path, O_WRONLY | O_CREAT | O_TRUNC, text, strlen(text), NULL);
}

int bus_append(const char *path, const char *text)
{
    return bus_write_ex(path, O_WRONLY | O_APPEND, text, strlen(text), NULL);
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

char **bus_ls(const char *path, size_t *n)
{
    DIR *d = opendir(path);
    if (!d)
        return NULL;
    size_t cap = 64, count = 0;
    char **names = malloc(cap * sizeof *names);
    struct dirent *e;
    errno = 0;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if (count == cap) {
            cap *= 2;
            names = realloc(names, cap * sizeof *names);
        }
        names[count++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, count, sizeof *names, by_name);
    *n = count;
    return names;
}

void bus_ls_free(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

long bus_count(const char *path)
{
    size_t n;
    char **names = bus_ls(path, &n);
    if (!names)
        return -1;
    bus_ls_free(names, n);
    return (long)n;
}

/* ---- JSON and the bus ------------------------------------------------- */

json_t *bus_json_file(const char *path, size_t flags)
{
    size_t len;
    char *text = bus_read_ok(path, &len);
    cr_assert(len >= 3 && text[len - 1] == '\n' && text[len - 2] == '}',
              "%s is not one JSON object followed by a newline: [%s]", path, text);
    json_error_t e;
    json_t *v = json_loadb(text, len - 1, flags | JSON_REJECT_DUPLICATES, &e);
    cr_assert(v && json_is_object(v), "%s: not a JSON object (%s): [%s]", path,
              v ? "other value" : e.text, text);
    free(text);
    return v;
}

json_t *bus_jsonl(const char *path)
{
    size_t len;
    char *text = bus_read_ok(path, &len);
    cr_assert(len == 0 || text[len - 1] == '\n', "%s: the last line has no newline", path);
    json_t *lines = json_array();
    char *line = text;
    while (line < text + len) {
        char *end = strchr(line, '\n');
        *end = '\0';
        json_error_t e;
        json_t *v = json_loads(line, JSON_REJECT_DUPLICATES, &e);
        cr_assert(v && json_is_object(v), "%s: a line is not a JSON object (%s): [%s]", path,
                  v ? "other value" : e.text, line);
        json_array_append_new(lines, v);
        line = end + 1;
    }
    free(text);
    return lines;
}

size_t bus_jsonl_count(const char *path)
{
    json_t *lines = bus_jsonl(path);
    size_t n = json_array_size(lines);
    json_decref(lines);
    return n;
}

static bool has_reason(const json_t *obj)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v)
    {
        if (json_is_string(v) && json_string_length(v) > 0 && strcmp(key, "timestamp") != 0)
            return true;
    }
    return false;
}

void bus_assert_logged(const char *path, size_t before, const char *what)
{
    json_t *lines = bus_jsonl(path);
    size_t n = json_array_size(lines);
    cr_assert(n > before, "%s: no reason line was added to %s (%zu lines)", what, path, n);
    for (size_t i = before; i < n; i++)
        cr_assert(has_reason(json_array_get(lines, i)), "%s: a line of %s carries no reason", what,
                  path);
    json_decref(lines);
}

void bus_agents(struct bus_fixture *f, ...)
{
    va_list ap;
    va_start(ap, f);
    const char *name;
    while ((name = va_arg(ap, const char *)) != NULL)
        cr_assert(mkdir(bus_path(f, "agents/%s", name), 0755) == 0, "mkdir agents/%s: %s", name,
                  strerror(errno));
    va_end(ap);
}

void bus_send(const char *from, const char *to, const char *text)
{
    enum bus_step step;
    int err = bus_write_ex(AT("agents/%s/outbox/%s", from, to), O_WRONLY | O_CREAT | O_TRUNC, text,
                           strlen(text), &step);
    cr_assert(err == 0, "sending %s -> %s failed at step %d: %s", from, to, (int)step,
              strerror(err));
}

bool bus_match(const char *re, const char *s)
{
    char anchored[1024];
    snprintf(anchored, sizeof anchored, "^(%s)$", re);
    regex_t rx;
    cr_assert(regcomp(&rx, anchored, REG_EXTENDED | REG_NOSUB) == 0, "bad regex %s", re);
    bool ok = regexec(&rx, s, 0, NULL, 0) == 0;
    regfree(&rx);
    return ok;
}

/* Seconds between a "YYYY-MM-DDTHH:MM:SS" UTC prefix and now, unsigned. */
static double age_of(const char *stamp, const char *format)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    if (!strptime(stamp, format, &tm))
        return 1e12;
    double d = difftime(time(NULL), timegm(&tm));
    return d < 0 ? -d : d;
}

void bus_assert_envelope(const json_t *env, const char *from, const char *to)
{
    static const char *const allowed[] = {"version",      "msg_id",   "from",           "to",
                                          "timestamp",    "sequence", "type",           "payload",
                                          "requires_ack", "priority", "correlation_id", "encoding"};
    cr_assert(json_is_object(env), "an envelope is not a JSON object");
    char *dump = json_dumps(env, JSON_COMPACT);
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)env, key, v)
    {
        bool known = false;
        for (size_t i = 0; i < sizeof allowed / sizeof *allowed; i++)
            known = known || strcmp(key, allowed[i]) == 0;
        cr_assert(known, "envelope has an unexpected field \"%s\": %s", key, dump);
    }
    for (size_t i = 0; i < 10; i++)
        cr_assert(json_object_get(env, allowed[i]), "envelope lacks \"%s\": %s", allowed[i], dump);
    json_t *version = json_object_get(env, "version");
    cr_assert(json_is_integer(version) && json_integer_value(version) == 1,
              "version is not the integer 1: %s", dump);
    const char *id = json_string_value(json_object_get(env, "msg_id"));
    cr_assert(id && bus_match(BUS_MSG_ID_RE, id), "bad msg_id: %s", dump);
    cr_assert(age_of(id + 4, "%Y%m%d-%H%M%S") < 3600, "msg_id's UTC date and time are not now: %s",
              dump);
    const char *got_from = json_string_value(json_object_get(env, "from"));
    const char *got_to = json_string_value(json_object_get(env, "to"));
    cr_assert(got_from && got_to, "from/to are not strings: %s", dump);
    if (from)
        cr_assert_str_eq(got_from, from, "from: %s", dump);
    if (to)
        cr_assert_str_eq(got_to, to, "to: %s", dump);
    const char *ts = json_string_value(json_object_get(env, "timestamp"));
    cr_assert(ts && bus_match(BUS_TIMESTAMP_RE, ts),
              "timestamp is not RFC 3339 UTC with microseconds: %s", dump);
    cr_assert(age_of(ts, "%Y-%m-%dT%H:%M:%S") < 3600, "timestamp is not now (UTC): %s", dump);
    json_t *seq = json_object_get(env, "sequence");
    cr_assert(json_is_integer(seq) && json_integer_value(seq) >= 1,
              "sequence is not a positive integer: %s", dump);
    const char *type = json_string_value(json_object_get(env, "type"));
    cr_assert(type && type[0], "type is not a non-empty string: %s", dump);
    cr_assert(json_is_boolean(json_object_get(env, "requires_ack")),
              "requires_ack is not a boolean: %s", dump);
    const char *prio = json_string_value(json_object_get(env, "priority"));
    cr_assert(prio && (strcmp(prio, "normal") == 0 || strcmp(prio, "urgent") == 0),
              "priority is not normal/urgent: %s", dump);
    json_t *corr = json_object_get(env, "correlation_id");
    cr_assert(!corr || json_is_string(corr), "correlation_id is not a string: %s", dump);
    json_t *enc = json_object_get(env, "encoding");
    cr_assert(!enc || (json_is_string(enc) && strcmp(json_string_value(enc), "base64") == 0),
              "encoding is not \"base64\": %s", dump);
    free(dump);
}

void bus_assert_keys(const json_t *obj, ...)
{
    char *dump = json_dumps(obj, JSON_COMPACT);
    size_t want = 0;
    va_list ap;
    va_start(ap, obj);
    const char *key;
    while ((key = va_arg(ap, const char *)) != NULL) {
        cr_assert(json_object_get(obj, key), "missing \"%s\" in %s", key, dump);
        want++;
    }
    va_end(ap);
    cr_assert(json_object_size(obj) == want, "want exactly %zu fields, got %zu: %s", want,
              json_object_size(obj), dump);
    free(dump);
}

static json_t *box(const char *agent, const char *which)
{
    size_t n;
    char **names = bus_ls(AT("agents/%s/%s", agent, which), &n);
    cr_assert(names, "ls agents/%s/%s: %s", agent, which, strerror(errno));
    json_t *all = json_array();
    for (size_t i = 0; i < n; i++) {
        cr_assert(bus_match("[0-9]{20}-" BUS_MSG_ID_RE "\\.json", names[i]),
                  "agents/%s/%s: bad message file name %s", agent, which, names[i]);
        json_t *env = bus_json_file(AT("agents/%s/%s/%s", agent, which, names[i]), 0);
        bool inbox = strcmp(which, "inbox") == 0;
        bus_assert_envelope(env, inbox ? NULL : agent, inbox ? agent : NULL);
        const char *id = json_string_value(json_object_get(env, "msg_id"));
        char want[256];
        snprintf(want, sizeof want, "%s.json", id);
        cr_assert_str_eq(names[i] + 21, want, "file name %s does not carry msg_id %s", names[i],
                         id);
        json_array_append_new(all, env);
    }
    bus_ls_free(names, n);
    return all;
}

json_t *bus_inbox(const char *agent)
{
    return box(agent, "inbox");
}

json_t *bus_outbox(const char *agent)
{
    return box(agent, "outbox");
}

json_t *bus_ctl(const char *agent)
{
    size_t len;
    char *text = bus_read_ok(AT("agents/%s/ctl", agent), &len);
    json_error_t e;
    json_t *v = json_loadb(text, len, JSON_REJECT_DUPLICATES, &e);
    cr_assert(v && json_is_object(v), "agents/%s/ctl is not a JSON object (%s): [%s]", agent,
              v ? "other value" : e.text, text);
    free(text);
    return v;
}

json_int_t bus_int(const json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    cr_assert(json_is_integer(v), "\"%s\" is not an integer", key);
    return json_integer_value(v);
}

const char *bus_str(const json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    cr_assert(json_is_string(v), "\"%s\" is not a string", key);
    return json_string_value(v);
}

/*
 * common.c — the temp dirs, the shared bus and the invariant checks of the harnesses.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "busfs/json.h"
#include "busfs/message.h"
#include "common.h"

/* ---------- temp dirs ---------- */

static char made[8][4096];
static int nmade;

void fuzz_rmtree(const char *path)
{
	struct stat st;
	if (lstat(path, &st) < 0)
		return;
	if (S_ISDIR(st.st_mode)) {
		DIR *d = opendir(path);
		if (d) {
			struct dirent *e;
			while ((e = readdir(d))) {
				if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
					continue;
				char sub[8192];
				snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
				fuzz_rmtree(sub);
			}
			closedir(d);
		}
		rmdir(path);
	} else {
		unlink(path);
	}
}

static void remove_made(void)
{
	for (int i = 0; i < nmade; i++)
		fuzz_rmtree(made[i]);
	nmade = 0;
}

static const char *tmp_base(void)
{
	const char *env = getenv("BUSFS_FUZZ_TMPDIR");
	if (env && *env)
		return env;
	return access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
}

/* Dirs "busfs-fuzz-<tag>-<pid>-XXXXXX" of processes that are gone (a crash exits
 * without atexit handlers). Only our own naming, only dead pids. */
static void reap_stale(const char *base)
{
	DIR *d = opendir(base);
	if (!d)
		return;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (strncmp(e->d_name, "busfs-fuzz-", 11) != 0)
			continue;
		const char *dash = strrchr(e->d_name, '-');   /* before XXXXXX */
		if (!dash || dash == e->d_name)
			continue;
		const char *p = dash - 1;
		while (p > e->d_name && *p >= '0' && *p <= '9')
			p--;
		if (*p != '-' || p + 1 == dash)
			continue;
		long pid = strtol(p + 1, NULL, 10);
		if (pid <= 0 || pid == (long)getpid())
			continue;
		if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
			continue;
		char path[4096];
		snprintf(path, sizeof path, "%s/%s", base, e->d_name);
		struct stat st;
		if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == geteuid())
			fuzz_rmtree(path);
	}
	closedir(d);
}

const char *fuzz_tmpdir(const char *tag)
{
	const char *base = tmp_base();
	static bool reaped;
	if (!reaped) {
		reap_stale(base);
		reaped = true;
	}
	FUZZ_CHECK(nmade < 8, "too many temp dirs");
	snprintf(made[nmade], sizeof made[nmade], "%s/busfs-fuzz-%s-%ld-XXXXXX", base, tag,
		 (long)getpid());
	FUZZ_CHECK(mkdtemp(made[nmade]) != NULL, "mkdtemp %s: %s", made[nmade], strerror(errno));
	if (nmade == 0)
		atexit(remove_made);
	return made[nmade++];
}

void fuzz_write_file(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	FUZZ_CHECK(fd >= 0, "open %s: %s", path, strerror(errno));
	const char *p = data;
	while (len) {
		ssize_t w = write(fd, p, len);
		FUZZ_CHECK(w > 0, "write %s: %s", path, strerror(errno));
		p += w;
		len -= (size_t)w;
	}
	close(fd);
}

/* ---------- JSON helpers ---------- */

void fuzz_check_jansson_agrees(const char *p, size_t len, const char *what)
{
	FUZZ_CHECK(json_is_value(p, len), "%s is not valid JSON: %.*s", what,
		   (int)(len > 300 ? 300 : len), p);
	json_error_t e;
	json_t *v = json_loadb(p, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
	if (v) {
		json_decref(v);
		return;
	}
	/* The known differences (see common.h). */
	if (strstr(e.text, "invalid Unicode") || strstr(e.text, "too big") ||
	    strstr(e.text, "overflow") || strstr(e.text, "NUL byte in object key"))
		return;
	FUZZ_CHECK(0, "%s: busfs accepts it as JSON, jansson refuses it (%s at %d): %.*s", what,
		   e.text, e.position, (int)(len > 300 ? 300 : len), p);
}

const char *fuzz_member(const char *obj, size_t len, const char *key, size_t *n)
{
	struct json_member m[64];
	char *keys = malloc(len + 1);
	FUZZ_CHECK(keys, "out of memory");
	int k = json_object_members(obj, len, m, 64, keys);
	const char *v = NULL;
	for (int i = 0; i < k; i++) {
		if (strcmp(m[i].key, key) == 0) {
			v = m[i].value;
			*n = m[i].value_len;
		}
	}
	free(keys);
	return v;
}

static bool member_is(const char *env, size_t len, const char *key, const char *text)
{
	size_t n = 0;
	const char *v = fuzz_member(env, len, key, &n);
	size_t tn = strlen(text);
	return v && n == tn + 2 && v[0] == '"' && memcmp(v + 1, text, tn) == 0 && v[n - 1] == '"';
}

void fuzz_check_envelope(const struct bus_message *m)
{
	const char *env = m->envelope;
	size_t len = m->len;
	FUZZ_CHECK(len > 1 && env[len - 1] == '\n' && env[len] == '\0',
		   "message %" PRIu64 ": the envelope does not end in one newline", m->number);
	FUZZ_CHECK(!memchr(env, '\n', len - 1) && !memchr(env, '\r', len - 1),
		   "message %" PRIu64 ": the envelope is not one line: %s", m->number, env);
	fuzz_check_jansson_agrees(env, len, "an envelope");
	FUZZ_CHECK(message_id_number(m->msg_id) == m->number,
		   "message %" PRIu64 ": msg_id %s does not carry its number", m->number, m->msg_id);
	FUZZ_CHECK(member_is(env, len, "msg_id", m->msg_id), "message %" PRIu64
		   ": envelope msg_id differs from %s: %s", m->number, m->msg_id, env);
	FUZZ_CHECK(member_is(env, len, "from", m->from) && member_is(env, len, "to", m->to),
		   "message %" PRIu64 ": envelope from/to differ from %s/%s: %s", m->number,
		   m->from, m->to, env);
	size_t n = 0;
	const char *corr = fuzz_member(env, len, "correlation_id", &n);
	if (m->corr_len) {
		FUZZ_CHECK(corr && (size_t)(corr - env) == m->corr_off && n == m->corr_len,
			   "message %" PRIu64 ": correlation_id at %u+%u, the envelope has it at "
			   "%zd+%zu: %s", m->number, m->corr_off, m->corr_len,
			   corr ? corr - env : (ssize_t)-1, n, env);
	} else {
		FUZZ_CHECK(!corr, "message %" PRIu64 ": a correlation_id the record does not know: "
			   "%s", m->number, env);
	}
	FUZZ_CHECK(fuzz_member(env, len, "payload", &n) && n > 0,
		   "message %" PRIu64 ": no payload: %s", m->number, env);
}

/* ---------- the errors logs ---------- */

static void check_last_error_line(struct bus *bus, uint64_t agent_id, const char *reason)
{
	size_t size = bus_errors_size(bus, agent_id);
	size_t from = size > 4096 ? size - 4096 : 0;
	struct buf tail;
	buf_init(&tail);
	bus_errors_read(bus, agent_id, from, size - from, &tail);
	FUZZ_CHECK(tail.len > 1 && tail.data[tail.len - 1] == '\n', "errors log of agent %" PRIu64
		   " does not end in a line", agent_id);
	size_t start = tail.len - 1;
	while (start > 0 && tail.data[start - 1] != '\n')
		start--;
	const char *line = tail.data + start;
	size_t len = tail.len - start;
	FUZZ_CHECK(!memchr(line, '\r', len), "an errors line holds a CR");
	fuzz_check_jansson_agrees(line, len, "an errors log line");
	/* The reason as json_append_string writes it (bytes that are not UTF-8 become
	 * U+FFFD); UTF-8 text decodes back to itself. */
	size_t n = 0;
	const char *v = fuzz_member(line, len, "reason", &n);
	struct buf want;
	buf_init(&want);
	json_append_string(&want, reason, strlen(reason));
	FUZZ_CHECK(v && n == want.len && memcmp(v, want.data, n) == 0,
		   "the errors line does not carry the reason '%s': %.*s", reason, (int)len, line);
	if (utf8_text_valid(reason, strlen(reason))) {
		json_t *r = json_loadb(v, n, JSON_DECODE_ANY, NULL);
		FUZZ_CHECK(json_is_string(r) && strcmp(json_string_value(r), reason) == 0,
			   "the reason '%s' does not decode back to itself: %.*s", reason, (int)len,
			   line);
		json_decref(r);
	}
	buf_free(&want);
	buf_free(&tail);
}

void fuzz_refused(struct fuzz_world *w, const char *op, const char *path, uid_t uid,
		  const struct bus_error *err)
{
	/* Logged as the server's own uid, which the errors budget spares (one uid gets 10
	 * lines a second, SPEC §11; tests/unit/test_errlog.c covers that): here every
	 * refusal must have its line. */
	(void)uid;
	bus_log_error(w->bus, "alice", op, path, getuid(), err);
	check_last_error_line(w->bus, 0, err->reason);
	check_last_error_line(w->bus, w->alice, err->reason);
}

/* ---------- the shared bus ---------- */

static void open_world(struct fuzz_world *w);

static void create_agent(struct fuzz_world *w, const char *name, uint64_t *id)
{
	struct bus_agent_info info;
	struct bus_error err = {0};
	int rc = bus_agent_create(w->bus, name, FUZZ_UID, FUZZ_UID, &info, &err);
	FUZZ_CHECK(rc == 0, "create %s: %s", name, err.reason);
	*id = info.id;
}

void fuzz_world_init(struct fuzz_world *w, const char *tag)
{
	unsigned long reset_every = w->reset_every;
	memset(w, 0, sizeof *w);
	w->reset_every = reset_every;
	snprintf(w->dir, sizeof w->dir, "%s", fuzz_tmpdir(tag));
	open_world(w);
}

static void open_world(struct fuzz_world *w)
{
	snprintf(w->store, sizeof w->store, "%s/store", w->dir);
	struct bus_config cfg = {
		.store_dir = w->store,
		.store_max_bytes = 1ull << 30,
		/* Metric points (fuzz_metric) are dropped after 10 s: bounded on disk. */
		.metrics_retention_s = 10,
	};
	struct bus_error err = {0};
	int rc = bus_open(&cfg, &w->bus, &err);
	FUZZ_CHECK(rc == 0, "bus_open %s: %s", w->store, err.reason);
	create_agent(w, "alice", &w->alice);
	create_agent(w, "bob", &w->bob);
	create_agent(w, "carol", &w->carol);
	rc = bus_ctl(w->bus, w->carol, FUZZ_UID, "drain", 5, &err);
	FUZZ_CHECK(rc == 0, "drain carol: %s", err.reason);
}

struct pending_list {
	uint64_t nums[64];
	char ids[64][BUS_MSG_ID_LEN + 1];
	size_t n;
};

static int collect(void *ctx, const struct bus_message *m)
{
	struct pending_list *l = ctx;
	if (l->n == 64)
		return 1;
	l->nums[l->n] = m->number;
	memcpy(l->ids[l->n], m->msg_id, sizeof l->ids[l->n]);
	l->n++;
	return 0;
}

struct agent_ids {
	uint64_t ids[64];
	size_t n;
};

static int collect_agent(void *ctx, const struct bus_agent_info *a)
{
	struct agent_ids *l = ctx;
	if (l->n < 64)
		l->ids[l->n++] = a->id;
	return 0;
}

static void ack_all(struct bus *bus)
{
	for (int round = 0; round < 1000; round++) {
		struct bus_stats st;
		bus_stats(bus, &st);
		if (st.pending == st.remote_queued)
			return; /* what is queued for other nodes leaves only when published */
		struct agent_ids agents = {0};
		bus_agent_list(bus, 0, collect_agent, &agents);
		for (size_t a = 0; a < agents.n; a++) {
			struct pending_list l = {0};
			bus_inbox_list(bus, agents.ids[a], 0, collect, &l);
			for (size_t i = 0; i < l.n; i++) {
				struct bus_error err = {0};
				int rc = bus_ack(bus, agents.ids[a], l.nums[i], l.ids[i], 0, &err);
				FUZZ_CHECK(rc == 0, "ack %s: %s", l.ids[i], err.reason);
			}
		}
	}
	FUZZ_CHECK(0, "acking every pending message did not empty the inboxes");
}

struct check_ctx {
	uint64_t depth_sum;
	uint32_t reserved;
	struct bus *bus;
};

static int check_message(void *ctx, const struct bus_message *m)
{
	(void)ctx;
	fuzz_check_envelope(m);
	return 0;
}

static int check_agent(void *ctx, const struct bus_agent_info *a)
{
	struct check_ctx *c = ctx;
	c->depth_sum += a->depth + a->leased;
	c->reserved += a->reserved;
	return 0;
}

void fuzz_check_bus(struct bus *bus)
{
	struct check_ctx c = {0, 0, bus};
	struct bus_stats st;
	bus_stats(bus, &st);
	bus_agent_list(bus, 0, check_agent, &c);
	FUZZ_CHECK(st.pending == c.depth_sum + st.remote_queued, "bus_stats pending %" PRIu64
		   " != the sum of inbox depths and leases %" PRIu64 " + %" PRIu64 " queued for "
		   "other nodes", st.pending, c.depth_sum, st.remote_queued);
	FUZZ_CHECK(c.reserved == 0, "%u inbox slot(s) stay reserved with no draft open",
		   c.reserved);
	struct agent_ids agents = {0};
	bus_agent_list(bus, 0, collect_agent, &agents);
	for (size_t a = 0; a < agents.n; a++)
		bus_inbox_list(bus, agents.ids[a], 0, check_message, NULL);
}

void fuzz_check_recovery(struct fuzz_world *w)
{
	struct buf report;
	buf_init(&report);
	int rc = bus_check_store(w->store, &report);
	FUZZ_CHECK(rc == 0, "bus_check_store of the live store failed (%d):\n%s", rc,
		   report.data ? report.data : "");
	struct bus_stats st;
	bus_stats(w->bus, &st);
	const char *line = strstr(report.data, " agent(s), ");
	while (line && line > report.data && line[-1] != '\n')
		line--;
	unsigned long agents = 0;
	uint64_t pending = 0;
	FUZZ_CHECK(line && sscanf(line, "%lu agent(s), %" SCNu64 " pending", &agents, &pending) == 2,
		   "unexpected check report:\n%s", report.data);
	FUZZ_CHECK(agents == st.agents && pending == st.pending,
		   "a reload of the store has %lu agent(s) and %" PRIu64 " pending message(s), the "
		   "live bus %u and %" PRIu64 ":\n%s", agents, pending, st.agents, st.pending,
		   report.data);
	buf_free(&report);
}

void fuzz_settle(struct fuzz_world *w)
{
	fuzz_check_bus(w->bus);
	ack_all(w->bus);
	fuzz_check_bus(w->bus);
	struct bus_stats st;
	bus_stats(w->bus, &st);
	/* Small, so a reload (fuzz_check_recovery) stays cheap. */
	if (++w->inputs % 256 == 0 || st.store_bytes > w->compacted_bytes + (64u << 10)) {
		int rc = bus_compact(w->bus);
		FUZZ_CHECK(rc == 0, "bus_compact: %d", rc);
		bus_stats(w->bus, &st);
		w->compacted_bytes = st.store_bytes;
	}
	if (w->reset_every && w->inputs % w->reset_every == 0) {
		bus_close(w->bus);
		fuzz_rmtree(w->store);
		open_world(w);
		w->compacted_bytes = 0;
	}
}

struct newest {
	struct bus_message *m;
};

static int keep_last(void *ctx, const struct bus_message *m)
{
	struct newest *n = ctx;
	n->m = (struct bus_message *)m;
	return 0;
}

struct bus_message *fuzz_newest(struct bus *bus, uint64_t agent_id)
{
	/* bus_inbox_list runs under the lock; take the reference outside with _get. */
	struct newest n = {NULL};
	bus_inbox_list(bus, agent_id, 0, keep_last, &n);
	return n.m ? bus_inbox_get(bus, agent_id, n.m->number) : NULL;
}

uint32_t fuzz_depth(struct bus *bus, uint64_t agent_id)
{
	struct bus_agent_info info;
	return bus_agent_by_id(bus, agent_id, &info) == 0 ? info.depth : 0;
}

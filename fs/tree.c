/* tree.c — the tree of SPEC §2 as tables, and the requests that only look at it:
 * LOOKUP, GETATTR, READDIR, ACCESS.
 *
 * Two tables declare every fixed node, the way procfs declares /proc/PID: the top
 * level, and the files inside each agent's directory. Inode numbers encode what a
 * node is (fs.h: kind in the top 4 bits, then an agent id or a message number), so
 * the server keeps no inode table and FORGET has nothing to free. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "busfs/clock.h"
#include "cluster.h"
#include "fs.h"

struct entry {
	const char *name;
	enum node node;
	enum node parent;
	mode_t mode;
};

/* The nodes that exist once; a fixed node's inode number is 2 + its index here. */
static const struct entry fixed_entries[] = {
	{"README", N_README, N_ROOT, S_IFREG | 0444},
	{"errors", N_ERRORS, N_ROOT, S_IFREG | 0444},
	/* Anyone may register an agent, only its owner may remove it: as /tmp. */
	{"agents", N_AGENTS, N_ROOT, S_IFDIR | S_ISVTX | 0777},
	{"health", N_HEALTH_DIR, N_ROOT, S_IFDIR | 0755},
	{"status", N_HEALTH_STATUS, N_HEALTH_DIR, S_IFREG | 0444},
	{"metrics", N_METRICS_DIR, N_ROOT, S_IFDIR | 0755},
	{"metrics.jsonl", N_METRICS_LOG, N_METRICS_DIR, S_IFREG | 0444},
	{"summary.json", N_SUMMARY, N_METRICS_DIR, S_IFREG | 0444},
	{"busfs.prom", N_PROM, N_METRICS_DIR, S_IFREG | 0444},
	{"alerts", N_ALERTS_DIR, N_ROOT, S_IFDIR | 0755},
	{"rules", N_RULES, N_ALERTS_DIR, S_IFREG | 0644},
	{"active.json", N_ACTIVE, N_ALERTS_DIR, S_IFREG | 0444},
	{"alerts.jsonl", N_ALERTS_LOG, N_ALERTS_DIR, S_IFREG | 0444},
	{"events", N_EVENTS, N_ROOT, S_IFREG | 0444},
};

/* The files of every agent's directory. */
static const struct entry agent_entries[] = {
	{"inbox", N_INBOX, N_AGENT_DIR, S_IFDIR | 0700},
	{"outbox", N_OUTBOX, N_AGENT_DIR, S_IFDIR | 0700},  /* the same envelopes as inboxes */
	{"send", N_SEND, N_AGENT_DIR, S_IFREG | 0200},
	{"next", N_NEXT, N_AGENT_DIR, S_IFREG | 0400},
	{"ctl", N_CTL, N_AGENT_DIR, S_IFREG | 0600},
	{"errors", N_AGENT_ERRORS, N_AGENT_DIR, S_IFREG | 0444},
	{"health", N_HEALTH, N_AGENT_DIR, S_IFREG | 0644},
	{"metrics", N_AGENT_METRICS, N_AGENT_DIR, S_IFREG | 0644},
	{"claim", N_CLAIM, N_AGENT_DIR, S_IFREG | 0400},
	{"inflight", N_INFLIGHT, N_AGENT_DIR, S_IFDIR | 0700},
	{"dead", N_DEAD, N_AGENT_DIR, S_IFDIR | 0700},
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* Names that only change through busfs's own VFS operations are cached long;
 * files whose size moves (logs, ctl) and server-made names are not cached. */
#define LONG_TIMEOUT 3600.0

/* ---------- inode numbers ---------- */

static bool is_fixed(enum node n) { return n >= N_ROOT && n < N_REMOTE_DIR; }

fuse_ino_t ino_of(const struct node_ref *r)
{
	const uint64_t kind_mask = (UINT64_C(1) << INO_KIND_SHIFT) - 1;
	if (r->node == N_ROOT)
		return FUSE_ROOT_ID;
	if (is_fixed(r->node)) {
		for (size_t i = 0; i < COUNT(fixed_entries); i++)
			if (fixed_entries[i].node == r->node)
				return 2 + (fuse_ino_t)i;
	}
	switch (r->node) {
	case N_REMOTE_DIR:
	case N_REMOTE_HEALTH:
		return (uint64_t)INO_REMOTE << INO_KIND_SHIFT | (r->agent_id & INO_AGENT_ID_MAX) << 8 |
		       (r->node == N_REMOTE_HEALTH);
	case N_PAIR:
		return (uint64_t)INO_PAIR << INO_KIND_SHIFT | (r->agent_id & INO_AGENT_ID_MAX) << 8 |
		       (r->token & 0xff);
	case N_INBOX_MSG:
		return (uint64_t)INO_INBOX << INO_KIND_SHIFT | (r->number & kind_mask);
	case N_OUTBOX_MSG:
		return (uint64_t)INO_OUTBOX << INO_KIND_SHIFT | (r->number & kind_mask);
	case N_LEASE_MSG:
		return (uint64_t)INO_LEASE << INO_KIND_SHIFT | (r->token & kind_mask);
	case N_DEAD_MSG:
		return (uint64_t)INO_DEAD << INO_KIND_SHIFT | (r->number & kind_mask);
	default:
		return (uint64_t)INO_AGENT << INO_KIND_SHIFT | (r->agent_id & INO_AGENT_ID_MAX) << 8 |
		       (uint64_t)(r->node - N_AGENT_DIR);
	}
}

struct node_ref ref_of(struct fs *fs, fuse_ino_t ino)
{
	struct node_ref r = {N_NONE, 0, 0, 0};
	uint64_t low = ino & ((UINT64_C(1) << INO_KIND_SHIFT) - 1);
	switch (ino >> INO_KIND_SHIFT) {
	case INO_FIXED:
		if (ino == FUSE_ROOT_ID)
			r.node = N_ROOT;
		else if (ino >= 2 && ino < 2 + COUNT(fixed_entries))
			r.node = fixed_entries[ino - 2].node;
		break;
	case INO_AGENT:
		if ((low & 0xff) <= N_AGENT_LAST - N_AGENT_DIR) {
			r.node = (enum node)(N_AGENT_DIR + (low & 0xff));
			r.agent_id = low >> 8;
		}
		break;
	case INO_PAIR:
		r.node = N_PAIR;
		r.agent_id = low >> 8;
		r.number = PAIR_UNKNOWN;
		r.token = low & 0xff;
		break;
	case INO_INBOX:
	case INO_OUTBOX:
		r.node = ino >> INO_KIND_SHIFT == INO_INBOX ? N_INBOX_MSG : N_OUTBOX_MSG;
		r.number = low;
		r.agent_id = bus_message_holder(fs->bus, low,
						r.node == N_INBOX_MSG ? BUS_INBOX : BUS_OUTBOX);
		break;
	case INO_LEASE:
		r.node = N_LEASE_MSG;
		r.token = low;
		bus_lease_find(fs->bus, low, &r.agent_id, &r.number);
		break;
	case INO_DEAD:
		r.node = N_DEAD_MSG;
		r.number = low;
		r.agent_id = bus_message_holder(fs->bus, low, BUS_DEAD);
		break;
	case INO_REMOTE:
		if ((low & 0xff) <= 1) {
			r.node = (low & 0xff) ? N_REMOTE_HEALTH : N_REMOTE_DIR;
			r.agent_id = low >> 8;
		}
		break;
	}
	return r;
}

static const struct entry *entry_of(enum node n)
{
	for (size_t i = 0; i < COUNT(fixed_entries); i++)
		if (fixed_entries[i].node == n)
			return &fixed_entries[i];
	for (size_t i = 0; i < COUNT(agent_entries); i++)
		if (agent_entries[i].node == n)
			return &agent_entries[i];
	return NULL;
}

/* ---------- attributes ---------- */

static void fill_time(struct stat *st, int64_t us)
{
	st->st_atim.tv_sec = st->st_mtim.tv_sec = st->st_ctim.tv_sec = (time_t)(us / 1000000);
	st->st_atim.tv_nsec = st->st_mtim.tv_nsec = st->st_ctim.tv_nsec = (long)(us % 1000000) * 1000;
}

double attr_timeout(enum node n)
{
	switch (n) {
	case N_ROOT: case N_README: case N_AGENTS: case N_HEALTH_DIR: case N_METRICS_DIR:
	case N_ALERTS_DIR: case N_SEND: case N_NEXT: case N_CLAIM:
	case N_PAIR:          /* what fstat() of an outbox/B being written shows */
		return LONG_TIMEOUT;
	default:
		return 0.0;
	}
}

/* A document is rendered for its size and kept for an OPEN that follows. */
static void render_for_size(struct fs *fs, const struct node_ref *r, struct stat *st)
{
	buf_reset(&fs->cached_doc);
	fs->cached_version = bus_version(fs->bus);
	if (doc_render(fs, r, &fs->cached_doc)) {
		fs->cached_ref = *r;
		fs->cached_at = bus_clock_monotonic();
		st->st_size = (off_t)fs->cached_doc.len;
	}
}

/* Fills st for a node; -ENOENT when it no longer exists. */
int node_attr(struct fs *fs, const struct node_ref *r, struct stat *st)
{
	static int64_t mounted_us;
	struct bus_agent_info a = {0};
	struct bus_message *m = NULL;

	memset(st, 0, sizeof *st);
	st->st_ino = ino_of(r);
	st->st_nlink = 1;
	st->st_uid = fs->uid;
	st->st_gid = fs->gid;
	st->st_blksize = 4096;
	if (!mounted_us)
		mounted_us = (int64_t)time(NULL) * 1000000;
	fill_time(st, mounted_us);

	if (r->node == N_REMOTE_DIR || r->node == N_REMOTE_HEALTH) {
		/* An agent on another node: a directory with its health, read-only. */
		char name[BUS_NAME_MAX + 1];
		if (!fs->cluster || !cluster_remote_name(fs->cluster, r->agent_id, name))
			return -ENOENT;
		st->st_mode = r->node == N_REMOTE_DIR ? S_IFDIR | 0555 : S_IFREG | 0444;
		st->st_nlink = r->node == N_REMOTE_DIR ? 2 : 1;
		if (r->node == N_REMOTE_HEALTH)
			render_for_size(fs, r, st);
		st->st_blocks = (st->st_size + 511) / 512;
		return 0;
	}
	const struct entry *e = entry_of(r->node);
	if (e)
		st->st_mode = e->mode;
	if (r->node == N_ROOT) {
		st->st_mode = S_IFDIR | 0755;
	}
	if (r->node >= N_AGENT_DIR) {
		if (bus_agent_by_id(fs->bus, r->agent_id, &a) < 0)
			return -ENOENT;
		st->st_uid = a.uid;
		st->st_gid = a.gid;
		fill_time(st, a.created_us);
	}
	uint64_t size;
	if (log_size(fs, r, &size)) {
		st->st_size = (off_t)size;
	} else if (r->node != N_ROOT && is_fixed(r->node) && S_ISDIR(st->st_mode)) {
		st->st_nlink = 2;
	} else {
		render_for_size(fs, r, st);
		if (r->node == N_HEALTH && a.last_seen_us)
			fill_time(st, a.last_seen_us);
	}
	switch (r->node) {
	case N_NONE:
		return -ENOENT;
	case N_ROOT:
		st->st_nlink = 6;
		break;
	case N_AGENT_DIR:
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 6;
		break;
	case N_INBOX:
		st->st_nlink = 2;
		st->st_size = a.depth;
		break;
	case N_INFLIGHT:
		st->st_nlink = 2;
		st->st_size = a.leased;
		break;
	case N_DEAD:
		st->st_nlink = 2;
		st->st_size = a.dead;
		break;
	case N_LEASE_MSG:
	case N_DEAD_MSG: {
		/* Their content is rendered (the lease or the dead letter's record added). */
		struct buf doc;
		buf_init(&doc);
		int rc = r->agent_id ? bus_place_render(fs->bus, r->agent_id,
							r->node == N_LEASE_MSG ? BUS_INFLIGHT : BUS_DEAD,
							r->number, &doc)
				     : -ENOENT;
		st->st_mode = S_IFREG | 0600;
		st->st_size = (off_t)doc.len;
		buf_free(&doc);
		if (rc < 0)
			return rc;
		break;
	}
	case N_OUTBOX:
		st->st_nlink = 2;
		st->st_size = a.outbox_count;
		break;
	case N_PAIR:
		st->st_mode = S_IFREG | 0200;
		break;
	case N_INBOX_MSG:
	case N_OUTBOX_MSG:
		m = r->node == N_INBOX_MSG ? bus_inbox_get(fs->bus, r->agent_id, r->number)
					   : bus_outbox_get(fs->bus, r->agent_id, r->number);
		if (!m)
			return -ENOENT;
		st->st_mode = r->node == N_INBOX_MSG ? S_IFREG | 0600 : S_IFREG | 0400;
		st->st_size = (off_t)m->len;
		message_unref(m);
		break;
	default:
		break;
	}
	st->st_blocks = (st->st_size + 511) / 512;
	return 0;
}

void node_path(struct fs *fs, const struct node_ref *r, const char *name, char *out, size_t n)
{
	struct bus_agent_info a = {.name = "?"};
	const struct entry *e = entry_of(r->node);
	if (r->node >= N_AGENT_DIR)
		bus_agent_by_id(fs->bus, r->agent_id, &a);
	if (r->node == N_REMOTE_DIR || r->node == N_REMOTE_HEALTH) {
		char agent[BUS_NAME_MAX + 1] = "?";
		if (fs->cluster)
			cluster_remote_name(fs->cluster, r->agent_id, agent);
		snprintf(out, n, "agents/%s%s", agent, r->node == N_REMOTE_HEALTH ? "/health" : "");
		return;
	}
	if (is_fixed(r->node)) {
		const struct entry *parent = r->node == N_ROOT ? NULL : entry_of(e->parent);
		snprintf(out, n, "%s%s%s%s%s", parent ? parent->name : "", parent ? "/" : "",
			 e ? e->name : "", e && name ? "/" : "", name ? name : "");
		return;
	}
	switch (r->node) {
	case N_AGENT_DIR:
		snprintf(out, n, "agents/%s%s%s", a.name, name ? "/" : "", name ? name : "");
		break;
	case N_PAIR: {
		struct bus_agent_info to = {.name = "all"};
		if (r->number == PAIR_UNKNOWN)
			snprintf(to.name, sizeof to.name, "(a message being written)");
		else if (r->number)
			bus_agent_by_id(fs->bus, r->number, &to);
		snprintf(out, n, "agents/%s/outbox/%s", a.name, to.name);
		break;
	}
	case N_INBOX_MSG: case N_OUTBOX_MSG: case N_LEASE_MSG: case N_DEAD_MSG:
		snprintf(out, n, "agents/%s/%s/%" PRIu64, a.name,
			 r->node == N_INBOX_MSG ? "inbox" : r->node == N_OUTBOX_MSG ? "outbox"
			 : r->node == N_LEASE_MSG ? "inflight" : "dead", r->number);
		break;
	default:
		snprintf(out, n, "agents/%s/%s%s%s", a.name, e ? e->name : "?", name ? "/" : "",
			 name ? name : "");
	}
}

static void reply_entry(fuse_req_t req, struct fs *fs, const struct node_ref *r)
{
	struct fuse_entry_param e;
	memset(&e, 0, sizeof e);
	int rc = node_attr(fs, r, &e.attr);
	if (rc < 0) {
		fuse_reply_err(req, -rc);
		return;
	}
	e.ino = e.attr.st_ino;
	e.generation = 1;
	e.attr_timeout = attr_timeout(r->node);
	bool server_made = r->node == N_INBOX_MSG || r->node == N_OUTBOX_MSG ||
			   r->node == N_LEASE_MSG || r->node == N_DEAD_MSG;
	e.entry_timeout = server_made ? 0.0 : LONG_TIMEOUT;
	fuse_reply_entry(req, &e);
}

/* ---------- LOOKUP ---------- */

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *fs = fuse_req_userdata(req);
	struct node_ref p = ref_of(fs, parent), r = {N_NONE, p.agent_id, 0, 0};
	struct bus_agent_info a;

	switch (p.node) {
	case N_ROOT:
	case N_HEALTH_DIR:
	case N_METRICS_DIR:
	case N_ALERTS_DIR:
		for (size_t i = 0; i < COUNT(fixed_entries); i++)
			if (fixed_entries[i].parent == p.node && strcmp(name, fixed_entries[i].name) == 0)
				r.node = fixed_entries[i].node;
		break;
	case N_AGENTS:
		if (strchr(name, '@')) {
			if (fs->cluster && cluster_remote_id(fs->cluster, name, &r.agent_id))
				r.node = N_REMOTE_DIR;
		} else if (bus_agent_by_name(fs->bus, name, &a) == 0) {
			r.node = N_AGENT_DIR;
			r.agent_id = a.id;
		}
		break;
	case N_REMOTE_DIR:
		if (strcmp(name, "health") == 0)
			r.node = N_REMOTE_HEALTH;
		break;
	case N_AGENT_DIR:
		for (size_t i = 0; i < COUNT(agent_entries); i++)
			if (strcmp(name, agent_entries[i].name) == 0)
				r.node = agent_entries[i].node;
		break;
	case N_INBOX:
	case N_OUTBOX: {
		/* outbox/B never exists as a file: creating it starts a message. Its ENOENT
		 * is not cached (no negative entry): Linux 6.x opens O_CREAT without the
		 * directory lock when a valid dentry is found, and a valid negative one that
		 * a concurrent CREATE turns positive is then opened as an existing file,
		 * which refuses it (EACCES, measured with 8 writers to one outbox/B). */
		char id[BUS_MSG_ID_LEN + 1];
		r.number = message_parse_any_file_name(name, id);
		if (!r.number)
			break;
		/* The whole name must match: the right number with another msg_id is not it. */
		struct bus_message *m = p.node == N_INBOX ? bus_inbox_get(fs->bus, p.agent_id, r.number)
							  : bus_outbox_get(fs->bus, p.agent_id, r.number);
		if (m && strcmp(m->msg_id, id) == 0)
			r.node = p.node == N_INBOX ? N_INBOX_MSG : N_OUTBOX_MSG;
		message_unref(m);
		break;
	}
	case N_INFLIGHT: {
		/* A lease's file: the name's token must be the message's lease now. */
		char id[BUS_MSG_ID_LEN + 1];
		uint64_t token, agent_id, number;
		r.number = lease_parse_file_name(name, id, &token);
		if (!r.number || bus_lease_find(fs->bus, token, &agent_id, &number) < 0 ||
		    agent_id != p.agent_id || number != r.number)
			break;
		struct bus_message *m = bus_place_get(fs->bus, p.agent_id, BUS_INFLIGHT, r.number);
		if (m && strcmp(m->msg_id, id) == 0) {
			r.node = N_LEASE_MSG;
			r.token = token;
		}
		message_unref(m);
		break;
	}
	case N_DEAD: {
		char id[BUS_MSG_ID_LEN + 1];
		r.number = message_parse_any_file_name(name, id);
		struct bus_message *m = r.number ? bus_place_get(fs->bus, p.agent_id, BUS_DEAD,
								 r.number) : NULL;
		if (m && strcmp(m->msg_id, id) == 0)
			r.node = N_DEAD_MSG;
		message_unref(m);
		break;
	}
	default:
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	if (r.node == N_NONE) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	reply_entry(req, fs, &r);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fuse_req_userdata(req);
	struct node_ref r = ref_of(fs, ino);
	struct stat st;
	int rc = node_attr(fs, &r, &st);
	if (rc < 0)
		fuse_reply_err(req, -rc);
	else
		fuse_reply_attr(req, &st, attr_timeout(r.node));
}

/* ---------- READDIR ---------- */

/* Offsets are stable: 1 ".", 2 "..", then table index + 3, agent id + 2, or message
 * number + 2, so an `rm` during `ls` never makes it skip an entry. */
struct dirfill {
	fuse_req_t req;
	struct fs *fs;
	char *buf;
	size_t size, used;
	enum node child;
	uint64_t agent_id;
	bool full;
};

static bool dir_add(struct dirfill *d, const char *name, fuse_ino_t ino, mode_t mode, off_t next)
{
	struct stat st = {.st_ino = ino, .st_mode = mode};
	size_t need = fuse_add_direntry(d->req, NULL, 0, name, NULL, 0);
	if (d->used + need > d->size) {
		d->full = true;
		return false;
	}
	fuse_add_direntry(d->req, d->buf + d->used, d->size - d->used, name, &st, next);
	d->used += need;
	return true;
}

static int add_agent(void *ctx, const struct bus_agent_info *a)
{
	struct dirfill *d = ctx;
	struct node_ref r = {N_AGENT_DIR, a->id, 0, 0};
	return !dir_add(d, a->name, ino_of(&r), S_IFDIR, (off_t)(a->id + 2));
}

static int add_message(void *ctx, const struct bus_message *m)
{
	struct dirfill *d = ctx;
	char name[BUS_FILE_NAME_LEN + 32];
	struct node_ref r = {d->child, d->agent_id, m->number, m->token};
	if (d->child == N_LEASE_MSG)
		lease_file_name(m, name, sizeof name);
	else
		message_file_name(m, name);
	return !dir_add(d, name, ino_of(&r), S_IFREG, (off_t)(m->number + 2));
}

/* Remote agents follow the local ones: offsets from REMOTE_OFF + their id. */
#define REMOTE_OFF (UINT64_C(1) << 56)

static int add_remote(void *ctx, const char *name, uint64_t id)
{
	struct dirfill *d = ctx;
	if (REMOTE_OFF + id <= d->agent_id)
		return 0; /* d->agent_id holds the offset to resume after */
	struct node_ref r = {N_REMOTE_DIR, id, 0, 0};
	return !dir_add(d, name, ino_of(&r), S_IFDIR, (off_t)(REMOTE_OFF + id));
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	struct fs *fs = fuse_req_userdata(req);
	struct node_ref r = ref_of(fs, ino);
	char buf[65536];
	struct dirfill d = {req, fs, buf, size < sizeof buf ? size : sizeof buf, 0, N_NONE,
			    r.agent_id, false};
	struct stat st;

	if (node_attr(fs, &r, &st) < 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (!S_ISDIR(st.st_mode)) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	if (off < 1 && !dir_add(&d, ".", ino, S_IFDIR, 1))
		goto done;
	if (off < 2 && !dir_add(&d, "..", FUSE_ROOT_ID, S_IFDIR, 2))
		goto done;
	const struct entry *table = NULL;
	size_t n = 0;
	if (is_fixed(r.node)) {
		table = fixed_entries;
		n = COUNT(fixed_entries);
	} else if (r.node == N_AGENT_DIR) {
		table = agent_entries;
		n = COUNT(agent_entries);
	}
	for (size_t i = 0; i < n; i++) {
		if ((off_t)i + 3 <= off || table[i].parent != r.node)
			continue;
		struct node_ref c = {table[i].node, r.agent_id, 0, 0};
		if (!dir_add(&d, table[i].name, ino_of(&c), table[i].mode, (off_t)i + 3))
			goto done;
	}
	uint64_t after = off > 2 ? (uint64_t)off - 2 : 0;
	if (r.node == N_REMOTE_DIR && off < 3) {
		struct node_ref c = {N_REMOTE_HEALTH, r.agent_id, 0, 0};
		if (!dir_add(&d, "health", ino_of(&c), S_IFREG | 0444, 3))
			goto done;
	}
	if (r.node == N_AGENTS) {
		if ((uint64_t)off < REMOTE_OFF)
			bus_agent_list(fs->bus, after, add_agent, &d);
		d.agent_id = (uint64_t)off;
		if (!d.full && fs->cluster)
			cluster_remote_agents(fs->cluster, add_remote, &d);
	} else if (r.node == N_INBOX || r.node == N_OUTBOX || r.node == N_INFLIGHT ||
		 r.node == N_DEAD) {
		static const struct { enum node dir, child; enum bus_place place; } views[] = {
			{N_INBOX, N_INBOX_MSG, BUS_INBOX},
			{N_OUTBOX, N_OUTBOX_MSG, BUS_OUTBOX},
			{N_INFLIGHT, N_LEASE_MSG, BUS_INFLIGHT},
			{N_DEAD, N_DEAD_MSG, BUS_DEAD},
		};
		for (size_t i = 0; i < COUNT(views); i++) {
			if (views[i].dir != r.node)
				continue;
			d.child = views[i].child;
			bus_place_list(fs->bus, r.agent_id, views[i].place, after, add_message, &d);
		}
	}
done:
	fuse_reply_buf(req, buf, d.used);
}

/* ---------- ACCESS: the same rules the operations apply ---------- */

static void op_access(fuse_req_t req, fuse_ino_t ino, int mask)
{
	struct fs *fs = fuse_req_userdata(req);
	struct node_ref r = ref_of(fs, ino);
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct stat st;
	int rc = node_attr(fs, &r, &st);
	if (rc < 0) {
		fuse_reply_err(req, -rc);
		return;
	}
	mode_t bits = st.st_mode & 0777;
	bool owner = ctx->uid == 0 || ctx->uid == st.st_uid;
	mode_t allowed = owner ? (bits >> 6) & 7 : bits & 7;
	if (S_ISDIR(st.st_mode))
		allowed |= X_OK;
	/* Root reads and writes what the owner may; the mode bits say what makes sense. */
	if ((mask & R_OK && !(allowed & 4)) || (mask & W_OK && !(allowed & 2)) ||
	    (mask & X_OK && !(allowed & 1)))
		fuse_reply_err(req, EACCES);
	else
		fuse_reply_err(req, 0);
}

/* ---------- generated documents and logs ---------- */

bool doc_render(struct fs *fs, const struct node_ref *r, struct buf *out)
{
	switch (r->node) {
	case N_README: readme_render(fs, out); return true;
	case N_CTL: bus_ctl_render(fs->bus, r->agent_id, out); return true;
	case N_HEALTH: bus_health_render(fs->bus, r->agent_id, out); return true;
	case N_HEALTH_STATUS: bus_status_render(fs->bus, out);
		if (fs->cluster)
			cluster_status_splice(fs->cluster, out);
		return true;
	case N_REMOTE_HEALTH:
		return fs->cluster && cluster_remote_health(fs->cluster, r->agent_id, out);
	case N_SUMMARY: bus_summary_render(fs->bus, out); return true;
	case N_PROM: bus_prom_render(fs->bus, out); return true;
	case N_ACTIVE: bus_active_render(fs->bus, out); return true;
	case N_RULES: bus_rules_render(fs->bus, out); return true;
	default: return false;
	}
}

void doc_for_open(struct fs *fs, const struct node_ref *r, struct buf *out)
{
	bool fresh = fs->cached_doc.len && fs->cached_ref.node == r->node &&
		     fs->cached_ref.agent_id == r->agent_id &&
		     fs->cached_version == bus_version(fs->bus) &&
		     bus_clock_monotonic() - fs->cached_at < 0.05;
	if (fresh) {
		struct buf t = *out;   /* hand the bytes over instead of copying them */
		*out = fs->cached_doc;
		fs->cached_doc = t;
	} else {
		doc_render(fs, r, out);
	}
	buf_reset(&fs->cached_doc);
}

bool log_size(struct fs *fs, const struct node_ref *r, uint64_t *size)
{
	switch (r->node) {
	case N_ERRORS: *size = bus_errors_size(fs->bus, 0); return true;
	case N_AGENT_ERRORS: *size = bus_errors_size(fs->bus, r->agent_id); return true;
	case N_METRICS_LOG: *size = bus_metrics_size(fs->bus, 0); return true;
	case N_AGENT_METRICS: *size = bus_metrics_size(fs->bus, r->agent_id); return true;
	case N_ALERTS_LOG: *size = bus_alerts_size(fs->bus); return true;
	case N_EVENTS: *size = bus_events_size(fs->bus); return true;
	default: return false;
	}
}

/* ---------- README ---------- */

void readme_render(struct fs *fs, struct buf *out)
{
	const struct bus_config *c = bus_config(fs->bus);
	buf_printf(out,
		"busfs " BUSFS_VERSION " — a message bus for agents, as files\n"
		"\n"
		"  mkdir agents/alice                       register agent alice\n"
		"  echo 'hello' > agents/alice/outbox/bob   send a message to bob ('all' broadcasts)\n"
		"  echo '{\"to\":\"bob\",\"payload\":{\"x\":1},\"requires_ack\":true}' >> agents/alice/send\n"
		"  ls agents/bob/inbox                      pending messages, oldest first\n"
		"  cat agents/bob/next                      waits for the oldest message and prints it\n"
		"  rm agents/bob/inbox/FILE                 acknowledge (consume) a message\n"
		"  echo 'ack MSG_ID' > agents/bob/ctl       the same, by msg_id\n"
		"  cat agents/bob/claim                      lease the oldest message to this reader\n"
		"  rm agents/bob/inflight/FILE              ack a leased message (touch: extend the lease)\n"
		"  echo 'nak MSG_ID TOKEN' > agents/bob/ctl  give it back; ls agents/bob/dead: dead letters\n"
		"  echo drain > agents/bob/ctl              refuse new messages (resume undoes it)\n"
		"  cat agents/bob/ctl                       bob's state as JSON\n"
		"  echo 'degraded disk full' > agents/bob/health   report health (touch = heartbeat)\n"
		"  cat health/status                        the whole bus's health as JSON\n"
		"  echo 'tasks.done 1 count' >> agents/bob/metrics   record a metric point\n"
		"  cat metrics/summary.json                 count/min/max/avg/p50/p95/p99 per metric\n"
		"  cat metrics/busfs.prom                   the same for Prometheus, with bus counters\n"
		"  echo 'slow task.ms p95 > 500 critical' > alerts/rules   an alert rule\n"
		"  cat alerts/active.json                   alerts firing now (alerts.jsonl: history)\n"
		"  cat errors, cat agents/bob/errors        why recent operations were refused\n"
		"  tail -f events                           what happens: deliveries, acks, leases, ...\n"
		"  rmdir agents/alice                       remove an agent (its inbox must be empty)\n"
		"\n"
		"Errors: EINVAL bad name, record, report, point or rule, ENOENT unknown recipient, EFBIG too large,\n"
		"EAGAIN inbox full, ENOSPC store full or too many metric series, ESHUTDOWN recipient\n"
		"draining, EACCES not allowed or read-only, EEXIST agent exists, ENOTEMPTY inbox\n"
		"not empty, EBUSY a message to the agent is being written, EDQUOT your uid's quota\n"
		"is used up, ESTALE a lease token that is no longer the message's lease.\n"
		"\n"
		"This bus: inbox capacity %u, max message size %" PRIu64 " bytes, health ttl %g s,\n"
		"lease %g s, max deliver %u,\n"
		"store %s (%" PRIu64 " bytes at most).\n"
		"Each uid but the server's: %u agents, %" PRIu64 " bytes of pending and unfinished\n"
		"messages, %u unfinished messages open to one inbox.\n"
		"inotify does not fire here: wait with `cat next` or poll().\n",
		c->inbox_capacity, c->max_message_size, c->health_ttl_s, c->lease_s, c->max_deliver,
		c->store_dir,
		c->store_max_bytes, c->max_agents_per_uid, c->max_bytes_per_uid,
		c->max_drafts_per_sender);
}

/* Handlers that only refuse or only look are here; the rest are in files.c. */
void files_init_ops(struct fuse_lowlevel_ops *ops);

static struct fuse_lowlevel_ops make_ops(void)
{
	struct fuse_lowlevel_ops ops;
	memset(&ops, 0, sizeof ops);
	ops.lookup = op_lookup;
	ops.getattr = op_getattr;
	ops.readdir = op_readdir;
	ops.access = op_access;
	return ops;
}

struct fuse_lowlevel_ops busfs_make_ops(void)
{
	struct fuse_lowlevel_ops ops = make_ops();
	files_init_ops(&ops);
	return ops;
}

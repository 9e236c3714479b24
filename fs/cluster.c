/* cluster.c — one bus across hosts on NATS JetStream (SPEC §12; cluster.h).
 *
 * JetStream holds what travels between nodes: stream BUSFS (subjects
 * busfs.msg.<node>.<agent>), one durable pull consumer per node (node-<node>) and the
 * KV bucket busfs_agents (key <node>.<agent>). Each is created when missing.
 *
 * Two threads, each with one job:
 *   the publisher leases the oldest message queued for another node (core/remote.c),
 *   publishes it with Nats-Msg-Id = its msg_id and acks it in the store once JetStream
 *   stored it; a send waiting for that (cluster_park) is answered then. (Never the
 *   FUSE thread: busfs serves every request from one dispatch thread, which must not
 *   wait for JetStream.) A message no
 *   one waits for (an ack, an undeliverable notice) is retried until it is stored; a
 *   send that cannot be stored within --cluster-timeout is taken back out of the
 *   queue and answered ETIMEDOUT.
 *   the receiver fetches this node's messages, commits each to the local store
 *   (bus_remote_receive, which recognises one fetched again by its msg_id) and only
 *   then acks it to JetStream; a full inbox naks it with a delay. Every second it
 *   also puts this node's agents into busfs_agents and learns the other nodes' from
 *   it.
 * A crash at any point loses nothing: a queued message stays in the store until
 * JetStream has it, a fetched one stays in JetStream until the store has it, and each
 * side drops the copy it already holds.
 *
 * Ownership: the cluster owns the connection, the JetStream context, the pull
 * subscription, the KV handle and both threads; cluster_stop ends the threads first,
 * then frees the rest. Parked FUSE requests belong to the list under `lock` until
 * answered, exactly once, by the publisher thread (or cluster_stop). */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <nats/nats.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "busfs/clock.h"
#include "busfs/remote.h"
#include "cluster.h"

#define STREAM "BUSFS"
#define AGENTS_BUCKET "busfs_agents"
#define HEALTH_BUCKET "busfs_health"
#define FETCH_BATCH 64
#define RETRY_DELAY_MS 1000
#define PUBLISH_BATCH 64
#define ACK_WAIT_MS 5000
/* The longest a stream, consumer or KV request waits for its answer. These run on the
 * receiver's thread and are retried, so a request lost while the cluster elects its
 * leaders costs this, not --cluster-timeout, which bounds a send (and may be long). */
#define API_WAIT_MS 5000
/* The stream request opens every join. Sent while the servers are still electing a
 * leader it is never answered, so it is given up soon and sent again. */
#define JOIN_WAIT_MS 1000
/* A delayed message not seen again for this long is gone from the stream or this
 * consumer (a new store, an operator's purge): later ones stop waiting for it. */
#define DELAYED_FORGET_US (60 * 1000000LL)

struct parked_send {
	fuse_req_t req;
	uint64_t *numbers;       /* 0 once that message's outcome is known */
	size_t n, left;
	size_t write_size;       /* 0: a flush */
	int err;
	int64_t deadline_us;
	uint64_t agent_id;
	char path[160];
	struct parked_send *next;
};

struct remote {
	char *name;              /* NAME@NODE */
	uint64_t id;
	int64_t known_us;        /* when this node learned of it */
};

struct health_rec {
	char *key;               /* <node>.<agent>, or <node> for a node's own record */
	char *text;              /* the JSON put there, NULL once deleted */
	int64_t seen_us;         /* when it last changed */
};

struct names {
	char **v;
	size_t n, cap;
	bool oom;
};

/* One message of the batch in flight: claimed, published asynchronously, and what
 * JetStream answered for it (set by on_pub_ack on a libnats thread, under
 * batch_lock). */
struct batch_entry {
	struct bus_outgoing out;
	char msg_id[2 * BUS_NAME_MAX + 3 * 128 + 8]; /* its Nats-Msg-Id (outgoing_msg) */
	natsStatus result;
	bool answered;
};

/* A fetched message that waits (nak with delay) for room in its recipient's inbox.
 * Later messages to that recipient wait behind it, so delivery keeps stream order. */
struct delayed {
	char agent[BUS_NAME_MAX + 1];
	uint64_t seq;            /* its stream sequence */
	int64_t seen_us;         /* when it last came */
};

struct cluster_verdict {
	atomic_int refs;
	atomic_int err;
};

/* A write to a remote agent, parked while the connection is down. */
struct parked_write {
	fuse_req_t req;
	size_t size;
	struct cluster_verdict *v;  /* a reference */
	int64_t deadline_us;
	uint64_t agent_id;
	char path[160];
	struct parked_write *next;
};

struct cluster {
	struct bus *bus;
	struct cluster_config cfg;
	char node[BUS_NAME_MAX + 1];
	char subject_prefix[BUS_NAME_MAX + 32];  /* busfs.msg.<node>. */

	natsOptions *opts;
	natsConnection *nc;
	jsCtx *js;
	natsSubscription *sub;   /* the receiver's */
	kvStore *kv;             /* the receiver's: busfs_agents */
	kvWatcher *awatch;       /* every change of busfs_agents */
	kvStore *hkv;            /* busfs_health */
	kvWatcher *hwatch;       /* every change of busfs_health */
	double health_ttl_s;
	int64_t health_put_us;   /* when this node last put its own record */

	pthread_mutex_t lock;    /* parked, remote, stop */
	pthread_cond_t cond;     /* the publisher sleeps on it */
	struct parked_send *parked;
	struct parked_write *writes;
	pthread_mutex_t batch_lock; /* the batch the publisher has out (publisher_main) */
	struct batch_entry batch[PUBLISH_BATCH];
	size_t nbatch;
	struct remote *remote;   /* known remote agents, in id order */
	size_t nremote;
	uint64_t next_remote_id; /* ids for the listing's inode numbers: never reused */
	struct health_rec *health; /* busfs_health as last seen, by key */
	size_t nhealth, health_cap;
	struct names local;      /* local agents put into busfs_agents (receiver only) */
	struct delayed *delayed; /* messages waiting for room (receiver only) */
	size_t ndelayed, delayed_cap;
	bool synced;             /* local was read back from busfs_agents once */
	natsStatus join_status;  /* the last failed stream request (receiver only) */
	bool stop;
	atomic_bool reconnected;  /* set by on_reconnected, taken by the receiver */
	atomic_uint_fast64_t kicks; /* sends parked so far: the publisher's wake-up */
	pthread_t publisher, receiver;
	bool publisher_started, receiver_started;
};

static int64_t now_us(void) { return bus_clock_now_us(); }

bool cluster_urls_valid(const char *urls)
{
	/* nats://HOST[:PORT] or tls://..., comma-separated, at most 16, no spaces */
	int n = 0;
	for (const char *p = urls; *p;) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		size_t scheme = strncmp(p, "nats://", 7) == 0 ? 7 : strncmp(p, "tls://", 6) == 0 ? 6 : 0;
		if (!scheme || len <= scheme || memchr(p, ' ', len) || ++n > 16)
			return false;
		p += len + (end ? 1 : 0);
		if (end && !*p)
			return false;
	}
	return n > 0;
}

bool cluster_node_valid(const char *node)
{
	size_t n = strlen(node);
	if (n == 0 || n > 32 || !((node[0] >= 'A' && node[0] <= 'Z') || (node[0] >= 'a' && node[0] <= 'z')))
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = node[i];
		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '-'))
			return false;
	}
	return true;
}

/* Whether cluster_stop has begun. */
static bool stopping(struct cluster *cl)
{
	pthread_mutex_lock(&cl->lock);
	bool stop = cl->stop;
	pthread_mutex_unlock(&cl->lock);
	return stop;
}

bool cluster_connected(struct cluster *cl)
{
	return cl && natsConnection_Status(cl->nc) == NATS_CONN_STATUS_CONNECTED;
}

/* ---------- parked sends ---------- */

static bool settle(struct cluster *cl, uint64_t number, int err);

static void answer(struct cluster *cl, struct parked_send *p)
{
	if (p->err) {
		struct bus_error err;
		bus_fail(&err, p->err, "JetStream did not acknowledge the send within "
			 "--cluster-timeout (%g s); it is not sent again", cl->cfg.timeout_s);
		struct bus_agent_info a;
		const char *agent = p->agent_id && bus_agent_by_id(cl->bus, p->agent_id, &a) == 0
				    ? a.name : NULL;
		bus_log_error(cl->bus, agent, p->write_size ? "write" : "flush", p->path,
			      fuse_req_ctx(p->req)->uid, &err);
		fuse_reply_err(p->req, p->err);
	} else if (p->write_size) {
		fuse_reply_write(p->req, p->write_size);
	} else {
		fuse_reply_err(p->req, 0);
	}
	free(p->numbers);
	free(p);
}

void cluster_park(struct cluster *cl, fuse_req_t req, const uint64_t *numbers, size_t n,
		  size_t write_size, uint64_t agent_id, const char *path)
{
	struct parked_send *p = calloc(1, sizeof *p);
	uint64_t *copy = malloc(n * sizeof *copy);
	if (!p || !copy) {
		/* Committed and queued: it will be published; only the wait is lost. */
		free(p);
		free(copy);
		if (write_size)
			fuse_reply_write(req, write_size);
		else
			fuse_reply_err(req, 0);
		return;
	}
	memcpy(copy, numbers, n * sizeof *copy);
	*p = (struct parked_send){.req = req, .numbers = copy, .n = n, .left = n,
				  .write_size = write_size, .agent_id = agent_id,
				  .deadline_us = now_us() + (int64_t)(cl->cfg.timeout_s * 1e6)};
	snprintf(p->path, sizeof p->path, "%s", path);
	pthread_mutex_lock(&cl->lock);
	p->next = cl->parked;
	cl->parked = p;
	/* The publisher may have taken a message between its commit and now, and found no
	 * one waiting for it. Under cl->lock a message that left its queue was stored
	 * (conclude takes one out without success only for a send waiting on it), so
	 * those are settled here; the rest settle when their publish ends. */
	size_t left = n;
	for (size_t i = 0; i < n; i++)
		if (!bus_outgoing_queued(cl->bus, numbers[i])) {
			left--;
			settle(cl, numbers[i], 0); /* the last one answers and frees p */
		}
	if (left) {
		atomic_fetch_add(&cl->kicks, 1);
		pthread_cond_signal(&cl->cond);
	}
	pthread_mutex_unlock(&cl->lock);
}

/* The outcome of message `number` for the send waiting on it (if any); answers the
 * send when it was its last. Returns whether one waited. Under cl->lock. */
static bool settle(struct cluster *cl, uint64_t number, int err)
{
	for (struct parked_send **pp = &cl->parked, *p; (p = *pp) != NULL; pp = &p->next)
		for (size_t i = 0; i < p->n; i++) {
			if (p->numbers[i] != number)
				continue;
			p->numbers[i] = 0;
			if (err && !p->err)
				p->err = err;
			if (--p->left == 0) {
				*pp = p->next;
				answer(cl, p);
			}
			return true;
		}
	return false;
}

/* Sends past their deadline: their messages not yet being published leave the queue,
 * and the send is answered ETIMEDOUT once none is being published. Under cl->lock. */
static void expire_parked(struct cluster *cl, bool all)
{
	int64_t now = now_us();
	for (struct parked_send *p = cl->parked, *next; p; p = next) {
		next = p->next;
		if (!all && p->deadline_us > now)
			continue;
		for (size_t i = 0; i < p->n; i++) {
			uint64_t number = p->numbers[i];
			if (!number)
				continue;
			int rc = bus_outgoing_cancel(cl->bus, number);
			if (rc == -EBUSY && !all)
				continue; /* its publish is under way: its outcome settles it */
			bool last = p->left == 1;
			settle(cl, number, rc == -ENOENT ? 0 : ETIMEDOUT);
			if (last)
				break; /* answered and freed */
		}
	}
}

/* ---------- writes parked while the connection is down ---------- */

struct cluster_verdict *cluster_park_write(struct cluster *cl, fuse_req_t req, size_t size,
					   struct cluster_verdict *v, uint64_t agent_id,
					   const char *path)
{
	struct parked_write *w = calloc(1, sizeof *w);
	if (!v && (v = calloc(1, sizeof *v)) != NULL)
		atomic_init(&v->refs, 1); /* the file's */
	if (!w || !v) {
		free(w);
		fuse_reply_err(req, ENOMEM);
		return v;
	}
	atomic_fetch_add(&v->refs, 1);
	*w = (struct parked_write){.req = req, .size = size, .v = v, .agent_id = agent_id,
				   .deadline_us = now_us() + (int64_t)(cl->cfg.timeout_s * 1e6)};
	snprintf(w->path, sizeof w->path, "%s", path);
	pthread_mutex_lock(&cl->lock);
	w->next = cl->writes;
	cl->writes = w;
	atomic_fetch_add(&cl->kicks, 1);
	pthread_cond_signal(&cl->cond);
	pthread_mutex_unlock(&cl->lock);
	return v;
}

int cluster_verdict_error(const struct cluster_verdict *v)
{
	return v ? atomic_load(&v->err) : 0;
}

void cluster_verdict_put(struct cluster_verdict *v)
{
	if (v && atomic_fetch_sub(&v->refs, 1) == 1)
		free(v);
}

/* Parked writes: answered once connected, or refused at their deadline (all: now).
 * Under cl->lock. */
static void answer_writes(struct cluster *cl, bool all)
{
	bool up = !all && cluster_connected(cl);
	int64_t now = now_us();
	for (struct parked_write **pp = &cl->writes, *w; (w = *pp) != NULL;) {
		if (!up && !all && w->deadline_us > now) {
			pp = &w->next;
			continue;
		}
		*pp = w->next;
		if (up) {
			fuse_reply_write(w->req, w->size);
		} else {
			atomic_store(&w->v->err, ETIMEDOUT);
			struct bus_error err;
			bus_fail(&err, ETIMEDOUT, "no connection to NATS within --cluster-timeout "
				 "(%g s): this message to another node is not sent", cl->cfg.timeout_s);
			struct bus_agent_info a;
			const char *agent = w->agent_id && bus_agent_by_id(cl->bus, w->agent_id, &a) == 0
					    ? a.name : NULL;
			bus_log_error(cl->bus, agent, "write", w->path, fuse_req_ctx(w->req)->uid, &err);
			fuse_reply_err(w->req, ETIMEDOUT);
		}
		cluster_verdict_put(w->v);
		free(w);
	}
}

/* ---------- NATS set-up ---------- */

static bool stream_ready(struct cluster *cl)
{
	jsStreamConfig sc;
	jsStreamConfig_Init(&sc);
	const char *subjects[] = {"busfs.msg.>"};
	sc.Name = STREAM;
	sc.Subjects = subjects;
	sc.SubjectsLen = 1;
	sc.Storage = js_FileStorage;
	sc.Replicas = cl->cfg.replicas;
	sc.Duplicates = (int64_t)(cl->cfg.dedupe_window_s * 1e9);
	jsOptions o;
	jsOptions_Init(&o);
	o.Wait = JOIN_WAIT_MS;
	jsStreamInfo *si = NULL;
	jsErrCode jerr = 0;
	natsStatus s = js_AddStream(&si, cl->js, &sc, &o, &jerr);
	if (s == NATS_OK || jerr == JSStreamNameExistErr) {
		jsStreamInfo_Destroy(si);
		cl->join_status = NATS_OK;
		return true;
	}
	/* Once per kind of failure: it is retried every JOIN_WAIT_MS or so. */
	if (s != cl->join_status)
		log_msg(LOG_WARNING, "cluster: cannot create stream %s yet: %s (%d); retrying",
			STREAM, natsStatus_GetText(s), (int)jerr);
	cl->join_status = s;
	return false;
}

static bool consumer_ready(struct cluster *cl)
{
	if (cl->sub)
		return true;
	char subject[BUS_NAME_MAX + 40], durable[BUS_NAME_MAX + 8];
	snprintf(subject, sizeof subject, "%s>", cl->subject_prefix);
	snprintf(durable, sizeof durable, "node-%s", cl->node);
	jsSubOptions so;
	jsSubOptions_Init(&so);
	so.Stream = STREAM;
	so.Config.AckPolicy = js_AckExplicit;
	so.Config.MaxDeliver = -1;
	/* A batch delivered while this node was away is lost in transit and comes again
	 * after AckWait: short, since a commit takes milliseconds. */
	so.Config.AckWait = (int64_t)ACK_WAIT_MS * 1000000;
	jsErrCode jerr = 0;
	natsStatus s = js_PullSubscribe(&cl->sub, cl->js, subject, durable, NULL, &so, &jerr);
	if (s != NATS_OK) {
		log_msg(LOG_WARNING, "cluster: cannot subscribe %s as %s: %s (%d)", subject, durable,
			natsStatus_GetText(s), (int)jerr);
		cl->sub = NULL;
		return false;
	}
	return true;
}

/* A KV bucket (made when missing) and a watcher of all its keys; both kept once had. */
static bool bucket_ready(struct cluster *cl, const char *bucket, kvStore **kv, kvWatcher **watch)
{
	if (!*kv) {
		kvConfig kc;
		kvConfig_Init(&kc);
		kc.Bucket = bucket;
		kc.History = 1;
		kc.StorageType = js_FileStorage;
		kc.Replicas = cl->cfg.replicas;
		natsStatus s = js_CreateKeyValue(kv, cl->js, &kc);
		if (s != NATS_OK) {
			*kv = NULL;
			s = js_KeyValue(kv, cl->js, bucket);
		}
		if (s != NATS_OK) {
			log_msg(LOG_WARNING, "cluster: cannot open KV bucket %s: %s", bucket,
				natsStatus_GetText(s));
			*kv = NULL;
			return false;
		}
	}
	if (!*watch && kvStore_WatchAll(watch, *kv, NULL) != NATS_OK) {
		*watch = NULL;
		return false;
	}
	return true;
}

/* ---------- the directory of agents and their health ---------- */

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void names_add(struct names *ns, const char *s)
{
	if (ns->n == ns->cap) {
		size_t cap = ns->cap ? ns->cap * 2 : 32;
		char **p = realloc(ns->v, cap * sizeof *p);
		if (!p) {
			ns->oom = true;
			return;
		}
		ns->v = p;
		ns->cap = cap;
	}
	if (!(ns->v[ns->n] = strdup(s)))
		ns->oom = true;
	else
		ns->n++;
}

static void names_free(struct names *ns)
{
	for (size_t i = 0; i < ns->n; i++)
		free(ns->v[i]);
	free(ns->v);
	memset(ns, 0, sizeof *ns);
}

static bool names_has(const struct names *ns, const char *s)
{
	return ns->n && bsearch(&s, ns->v, ns->n, sizeof *ns->v, cmp_str) != NULL;
}

static struct remote *remote_find(struct cluster *cl, const char *name)
{
	for (size_t i = 0; i < cl->nremote; i++)
		if (strcmp(cl->remote[i].name, name) == 0)
			return &cl->remote[i];
	return NULL;
}

static struct remote *remote_by_id(struct cluster *cl, uint64_t id)
{
	for (size_t i = 0; i < cl->nremote; i++)
		if (cl->remote[i].id == id)
			return &cl->remote[i];
	return NULL;
}

static void remote_free(struct remote *r)
{
	free(r->name);
}

/* The health record under KV key k ("<node>.<agent>" or "<node>"), or a new one. */
static struct health_rec *health_slot(struct cluster *cl, const char *key, bool create)
{
	for (size_t i = 0; i < cl->nhealth; i++)
		if (strcmp(cl->health[i].key, key) == 0)
			return &cl->health[i];
	if (!create)
		return NULL;
	if (cl->nhealth == cl->health_cap) {
		size_t cap = cl->health_cap ? cl->health_cap * 2 : 32;
		struct health_rec *p = realloc(cl->health, cap * sizeof *p);
		if (!p)
			return NULL;
		cl->health = p;
		cl->health_cap = cap;
	}
	struct health_rec *h = &cl->health[cl->nhealth];
	memset(h, 0, sizeof *h);
	if (!(h->key = strdup(key)))
		return NULL;
	cl->nhealth++;
	return h;
}

static int add_local(void *ctx, const struct bus_agent_info *a)
{
	names_add(ctx, a->name);
	return 0;
}

/* This node's agents into busfs_agents (new ones put, removed ones deleted) and their
 * health into busfs_health (when it changed, and every --health-ttl / 2 anyway, with
 * the node's own record). */
static void sync_agents(struct cluster *cl)
{
	struct names local = {0};
	bus_agent_list(cl->bus, 0, add_local, &local);
	if (local.oom) {
		names_free(&local);
		return;
	}
	if (local.n)
		qsort(local.v, local.n, sizeof *local.v, cmp_str);
	char key[2 * BUS_NAME_MAX + 2];
	bool ok = true;
	if (!cl->synced) {
		/* What this node put in an earlier run: an agent gone since (a new store)
		 * is deleted below like one removed now. */
		kvKeysList keys = {0};
		natsStatus ks = kvStore_Keys(&keys, cl->kv, NULL);
		size_t nl = strlen(cl->node);
		for (int i = 0; ks == NATS_OK && i < keys.Count; i++)
			if (strncmp(keys.Keys[i], cl->node, nl) == 0 && keys.Keys[i][nl] == '.')
				names_add(&cl->local, keys.Keys[i] + nl + 1);
		kvKeysList_Destroy(&keys);
		if (ks != NATS_OK && ks != NATS_NOT_FOUND) {
			names_free(&local);
			return;
		}
		if (cl->local.n)
			qsort(cl->local.v, cl->local.n, sizeof *cl->local.v, cmp_str);
		cl->synced = true;
	}
	int64_t now = now_us();
	bool refresh = now - cl->health_put_us >= (int64_t)(cl->health_ttl_s * 1e6 / 2);
	struct buf doc;
	buf_init(&doc);
	for (size_t i = 0; i < local.n && ok; i++) {
		snprintf(key, sizeof key, "%s.%s", cl->node, local.v[i]);
		uint64_t rev;
		if (!names_has(&cl->local, local.v[i]))
			ok = kvStore_PutString(&rev, cl->kv, key, "{}") == NATS_OK;
		struct bus_agent_info a;
		buf_reset(&doc);
		if (!ok || bus_agent_by_name(cl->bus, local.v[i], &a) < 0 ||
		    bus_health_render(cl->bus, a.id, &doc) < 0 || !buf_ok(&doc))
			continue;
		struct health_rec *h = health_slot(cl, key, true);
		if (!h || (!refresh && h->text && strcmp(h->text, doc.data) == 0))
			continue;
		if (kvStore_Put(&rev, cl->hkv, key, doc.data, (int)doc.len) == NATS_OK) {
			free(h->text);
			h->text = strdup(doc.data);
		}
	}
	buf_free(&doc);
	for (size_t i = 0; i < cl->local.n && ok; i++) {
		if (names_has(&local, cl->local.v[i]))
			continue;
		snprintf(key, sizeof key, "%s.%s", cl->node, cl->local.v[i]);
		ok = kvStore_Delete(cl->kv, key) == NATS_OK;
		kvStore_Delete(cl->hkv, key);
	}
	if (refresh && ok) {
		char rec[128], ts[BUS_TIME_LEN + 1];
		bus_time_format(now, ts);
		snprintf(rec, sizeof rec, "{\"status\":\"up\",\"last_seen\":\"%s\",\"agents\":%zu}", ts,
			 local.n);
		uint64_t rev;
		if (kvStore_PutString(&rev, cl->hkv, cl->node, rec) == NATS_OK)
			cl->health_put_us = now;
	}
	if (ok) {
		names_free(&cl->local);
		cl->local = local;
	} else {
		names_free(&local);
	}
}

/* "NAME@NODE" for a busfs_agents key "<node>.<name>" of another node; false for this
 * node's keys and malformed ones. */
static bool remote_name_of_key(const struct cluster *cl, const char *k, char *name, size_t size)
{
	const char *dot = strchr(k, '.');
	size_t nl = strlen(cl->node);
	if (!dot || ((size_t)(dot - k) == nl && strncmp(k, cl->node, nl) == 0))
		return false;
	snprintf(name, size, "%s@%.*s", dot + 1, (int)(dot - k), k);
	return bus_remote_split(name, NULL, NULL);
}

/* Learns (present) or forgets a remote agent. The list stays in id order (a listing
 * resumes by id): a new one is appended with the next id. Under cl->lock. */
static void remote_set(struct cluster *cl, const char *name, bool present)
{
	struct remote *r = remote_find(cl, name);
	if (present && !r) {
		struct remote *p = realloc(cl->remote, (cl->nremote + 1) * sizeof *p);
		char *copy = strdup(name);
		if (p)
			cl->remote = p;
		if (!p || !copy) {
			free(copy); /* no memory: the next full listing adds it */
			return;
		}
		cl->remote[cl->nremote++] = (struct remote){copy, cl->next_remote_id++, now_us()};
		bus_remote_known(cl->bus, name, true);
		log_msg(LOG_INFO, "cluster: %s is known", name);
	} else if (!present && r) {
		bus_remote_known(cl->bus, name, false);
		log_msg(LOG_INFO, "cluster: %s is gone", name);
		remote_free(r);
		memmove(r, r + 1, (size_t)(cl->remote + cl->nremote - r - 1) * sizeof *r);
		cl->nremote--;
	}
}

/* Changes to busfs_agents as they happen. */
static void watch_agents(struct cluster *cl)
{
	kvEntry *e = NULL;
	while (kvWatcher_Next(&e, cl->awatch, 1) == NATS_OK) {
		char name[2 * BUS_NAME_MAX + 2];
		if (e && remote_name_of_key(cl, kvEntry_Key(e), name, sizeof name)) {
			pthread_mutex_lock(&cl->lock);
			remote_set(cl, name, kvEntry_Operation(e) == kvOp_Put);
			pthread_mutex_unlock(&cl->lock);
		}
		kvEntry_Destroy(e);
		e = NULL;
	}
}

/* Every key of busfs_agents, now and then: whatever the watcher missed (it is
 * restarted across a lost connection) is put right. */
static void reconcile_agents(struct cluster *cl)
{
	kvKeysList keys = {0};
	natsStatus s = kvStore_Keys(&keys, cl->kv, NULL);
	if (s != NATS_OK && s != NATS_NOT_FOUND) {
		log_msg(LOG_DEBUG, "cluster: listing %s: %s", AGENTS_BUCKET, natsStatus_GetText(s));
		kvKeysList_Destroy(&keys);
		return;
	}
	struct names remote = {0};
	for (int i = 0; i < keys.Count; i++) {
		char name[2 * BUS_NAME_MAX + 2];
		if (remote_name_of_key(cl, keys.Keys[i], name, sizeof name))
			names_add(&remote, name);
	}
	kvKeysList_Destroy(&keys);
	if (remote.oom) {
		names_free(&remote);
		return;
	}
	if (remote.n)
		qsort(remote.v, remote.n, sizeof *remote.v, cmp_str);
	pthread_mutex_lock(&cl->lock);
	for (size_t i = cl->nremote; i-- > 0;)
		if (!names_has(&remote, cl->remote[i].name))
			remote_set(cl, cl->remote[i].name, false);
	for (size_t i = 0; i < remote.n; i++)
		remote_set(cl, remote.v[i], true);
	pthread_mutex_unlock(&cl->lock);
	names_free(&remote);
}

/* Health records of other nodes as the watcher sees them change. */
static void watch_health(struct cluster *cl)
{
	kvEntry *e = NULL;
	while (kvWatcher_Next(&e, cl->hwatch, 1) == NATS_OK) {
		if (!e)
			continue; /* the end of the initial values */
		const char *key = kvEntry_Key(e);
		pthread_mutex_lock(&cl->lock);
		struct health_rec *h = health_slot(cl, key, true);
		if (h) {
			free(h->text);
			h->text = NULL;
			if (kvEntry_Operation(e) == kvOp_Put)
				h->text = strndup(kvEntry_Value(e), (size_t)kvEntry_ValueLen(e));
			h->seen_us = now_us();
		}
		pthread_mutex_unlock(&cl->lock);
		kvEntry_Destroy(e);
		e = NULL;
	}
}

void cluster_remote_agents(struct cluster *cl, int (*fn)(void *ctx, const char *name, uint64_t id),
			   void *ctx)
{
	pthread_mutex_lock(&cl->lock);
	for (size_t i = 0; i < cl->nremote; i++)
		if (fn(ctx, cl->remote[i].name, cl->remote[i].id))
			break;
	pthread_mutex_unlock(&cl->lock);
}

bool cluster_remote_id(struct cluster *cl, const char *name, uint64_t *id)
{
	pthread_mutex_lock(&cl->lock);
	struct remote *r = remote_find(cl, name);
	if (r)
		*id = r->id;
	pthread_mutex_unlock(&cl->lock);
	return r != NULL;
}

bool cluster_remote_name(struct cluster *cl, uint64_t id, char *name)
{
	pthread_mutex_lock(&cl->lock);
	struct remote *r = remote_by_id(cl, id);
	if (r)
		snprintf(name, BUS_NAME_MAX + 1, "%s", r->name);
	pthread_mutex_unlock(&cl->lock);
	return r != NULL;
}

/* The health document of a remote agent as its node put it ("agent": NAME@NODE), or
 * "unknown" when none came yet; "stale" when its node has been silent past
 * --health-ttl, or was not heard from in that long since the agent was learned of.
 * Under cl->lock. */
static json_t *remote_health(struct cluster *cl, const struct remote *r)
{
	char agent[BUS_NAME_MAX + 1], node[BUS_NAME_MAX + 1], key[2 * BUS_NAME_MAX + 2];
	bus_remote_split(r->name, agent, node);
	snprintf(key, sizeof key, "%s.%s", node, agent);
	struct health_rec *h = health_slot(cl, key, false), *n = health_slot(cl, node, false);
	json_t *doc = h && h->text ? json_loads(h->text, 0, NULL) : NULL;
	if (!json_is_object(doc)) {
		json_decref(doc);
		doc = json_pack("{s:s,s:s,s:s,s:n,s:n}", "agent", r->name, "status", "unknown",
				"reason", "no health from its node yet", "last_seen", "age_s");
	}
	json_object_set_new(doc, "agent", json_string(r->name));
	int64_t seen;
	const char *last = json_string_value(json_object_get(doc, "last_seen"));
	if (last && bus_time_parse(last, &seen)) /* its age now, not when it was put */
		json_object_set_new(doc, "age_s", json_real((double)((now_us() - seen) / 1000) / 1000.0));
	/* Stale: its node's record is older than --health-ttl, or none came in that long
	 * since the agent was learned of (a moment after, it may just not be here yet). */
	int64_t ttl_us = (int64_t)(cl->health_ttl_s * 1e6);
	if (n ? now_us() - n->seen_us > ttl_us : now_us() - r->known_us > ttl_us) {
		json_object_set_new(doc, "status", json_string("stale"));
		json_object_set_new(doc, "reason", json_string("its node has been silent past "
							       "--health-ttl"));
	}
	return doc;
}

bool cluster_remote_health(struct cluster *cl, uint64_t id, struct buf *out)
{
	pthread_mutex_lock(&cl->lock);
	struct remote *r = remote_by_id(cl, id);
	json_t *doc = r ? remote_health(cl, r) : NULL;
	pthread_mutex_unlock(&cl->lock);
	char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(12)) : NULL;
	if (text) {
		buf_puts(out, text);
		buf_puts(out, "\n");
	}
	free(text);
	json_decref(doc);
	return text != NULL;
}

void cluster_status_splice(struct cluster *cl, struct buf *out)
{
	json_t *status = out->len ? json_loadb(out->data, out->len, 0, NULL) : NULL;
	json_t *agents = json_object_get(status, "agents");
	json_t *counts = json_object_get(status, "counts");
	if (!json_is_object(agents) || !json_is_object(counts)) {
		json_decref(status);
		return;
	}
	json_t *nodes = json_object();
	pthread_mutex_lock(&cl->lock);
	for (size_t i = 0; i < cl->nremote; i++) {
		json_t *doc = remote_health(cl, &cl->remote[i]);
		json_object_del(doc, "agent");
		const char *st = json_string_value(json_object_get(doc, "status"));
		json_t *c = st ? json_object_get(counts, st) : NULL;
		if (json_is_integer(c))
			json_integer_set(c, json_integer_value(c) + 1);
		json_object_set_new(agents, cl->remote[i].name, doc);
	}
	for (size_t i = 0; i < cl->nhealth; i++) {
		const struct health_rec *h = &cl->health[i];
		if (strchr(h->key, '.') || !h->text)
			continue;
		json_t *rec = json_loads(h->text, 0, NULL);
		if (!json_is_object(rec)) {
			json_decref(rec);
			continue;
		}
		bool self = strcmp(h->key, cl->node) == 0;
		bool fresh = self || now_us() - h->seen_us <= (int64_t)(cl->health_ttl_s * 1e6);
		json_object_set_new(rec, "status", json_string(fresh ? "up" : "stale"));
		json_object_set_new(nodes, h->key, rec);
	}
	pthread_mutex_unlock(&cl->lock);
	json_object_set_new(status, "nodes", nodes);
	char *text = json_dumps(status, JSON_COMPACT | JSON_REAL_PRECISION(12));
	if (text) {
		buf_reset(out);
		buf_puts(out, text);
		buf_puts(out, "\n");
	}
	free(text);
	json_decref(status);
}

/* ---------- the receiver ---------- */

/* After a start or a reconnect: messages JetStream delivered to a fetch that died
 * with the old connection (or the old process) are unacknowledged and come again
 * after AckWait, first, before newer ones. Fetching at once would commit newer
 * messages before them, out of their senders' order; so wait for them. */
static void await_redeliveries(struct cluster *cl)
{
	char durable[BUS_NAME_MAX + 8];
	snprintf(durable, sizeof durable, "node-%s", cl->node);
	jsConsumerInfo *ci = NULL;
	jsErrCode jerr = 0;
	if (js_GetConsumerInfo(&ci, cl->js, STREAM, durable, NULL, &jerr) == NATS_OK &&
	    ci->NumAckPending > 0) {
		log_msg(LOG_INFO, "cluster: %lld message(s) fetched before are unacknowledged: "
			"waiting %d ms for them to come again, in order",
			(long long)ci->NumAckPending, ACK_WAIT_MS);
		/* A stop does not wait for them. */
		for (int64_t end = now_us() + (ACK_WAIT_MS + 200) * 1000LL;
		     now_us() < end && !stopping(cl);)
			nats_Sleep(100);
	}
	jsConsumerInfo_Destroy(ci);
}

/* The stream sequence of a fetched message, 0 when it has none. */
static uint64_t stream_seq(natsMsg *msg)
{
	jsMsgMetaData *meta = NULL;
	uint64_t seq = 0;
	if (natsMsg_GetMetaData(&meta, msg) == NATS_OK)
		seq = meta->Sequence.Stream;
	jsMsgMetaData_Destroy(meta);
	return seq;
}

/* Whether message seq to agent must wait: an earlier one to that agent waits for
 * room. Forgets entries not seen for DELAYED_FORGET_US. */
static bool waits_behind(struct cluster *cl, const char *agent, uint64_t seq)
{
	int64_t now = now_us();
	bool behind = false;
	for (size_t i = 0; i < cl->ndelayed;) {
		struct delayed *d = &cl->delayed[i];
		if (now - d->seen_us > DELAYED_FORGET_US) {
			*d = cl->delayed[--cl->ndelayed];
			continue;
		}
		if (d->seq < seq && strcmp(d->agent, agent) == 0)
			behind = true;
		i++;
	}
	return behind;
}

/* Notes that message seq to agent waits (again); without memory it is only naked,
 * and order may suffer, never delivery. */
static void delay_note(struct cluster *cl, const char *agent, uint64_t seq)
{
	for (size_t i = 0; i < cl->ndelayed; i++)
		if (cl->delayed[i].seq == seq) {
			cl->delayed[i].seen_us = now_us();
			return;
		}
	if (cl->ndelayed == cl->delayed_cap) {
		size_t cap = cl->delayed_cap ? cl->delayed_cap * 2 : 16;
		struct delayed *p = realloc(cl->delayed, cap * sizeof *p);
		if (!p)
			return;
		cl->delayed = p;
		cl->delayed_cap = cap;
	}
	struct delayed *d = &cl->delayed[cl->ndelayed++];
	snprintf(d->agent, sizeof d->agent, "%s", agent);
	d->seq = seq;
	d->seen_us = now_us();
}

static void delay_done(struct cluster *cl, uint64_t seq)
{
	for (size_t i = 0; i < cl->ndelayed; i++)
		if (cl->delayed[i].seq == seq) {
			cl->delayed[i] = cl->delayed[--cl->ndelayed];
			return;
		}
}

static void receive_one(struct cluster *cl, natsMsg *msg)
{
	const char *subject = natsMsg_GetSubject(msg);
	size_t plen = strlen(cl->subject_prefix);
	const char *from_node = NULL;
	if (natsMsgHeader_Get(msg, "Busfs-Node", &from_node) != NATS_OK)
		from_node = NULL;
	struct bus_error err = {0};
	int rc;
	uint64_t seq = stream_seq(msg);
	if (strncmp(subject, cl->subject_prefix, plen) != 0 || !from_node) {
		rc = bus_fail(&err, EINVAL, "a message on %.80s without a sending node", subject);
	} else if (seq && cl->ndelayed && waits_behind(cl, subject + plen, seq)) {
		rc = -EAGAIN;
	} else {
		const char *expires = NULL;
		int64_t expires_us = 0;
		if (natsMsgHeader_Get(msg, "Busfs-Expires", &expires) == NATS_OK && expires)
			expires_us = strtoll(expires, NULL, 10);
		rc = bus_remote_receive(cl->bus, subject + plen, from_node, natsMsg_GetData(msg),
					(size_t)natsMsg_GetDataLength(msg), expires_us, &err);
	}
	if (rc == -EAGAIN || rc == -ENOSPC || rc == -ENOMEM || rc == -EIO) {
		/* No room (a full inbox, a full store): JetStream keeps it and brings it
		 * again after the delay; the ones after it to this agent wait too. */
		if (seq)
			delay_note(cl, subject + plen, seq);
		natsMsg_NakWithDelay(msg, RETRY_DELAY_MS, NULL);
		return;
	}
	if (seq && cl->ndelayed)
		delay_done(cl, seq);
	if (rc < 0 && rc != -ENOENT)
		log_msg(LOG_WARNING, "cluster: dropped a message on %s: %s", subject, err.reason);
	/* In the store (or refused for good): JetStream may forget it. A lost ack brings
	 * it back after AckWait, and its msg_id is recognised then. */
	natsMsg_Ack(msg, NULL);
}

static void *receiver_main(void *arg)
{
	struct cluster *cl = arg;
	int64_t last_sync = 0, last_reconcile = 0;
	natsStatus last_fetch = NATS_OK;
	bool ready = false;
	while (!stopping(cl)) {
		if (!cluster_connected(cl)) {
			nats_Sleep(100);
			continue;
		}
		if (!ready) {
			ready = stream_ready(cl) && consumer_ready(cl) &&
				bucket_ready(cl, AGENTS_BUCKET, &cl->kv, &cl->awatch) &&
				bucket_ready(cl, HEALTH_BUCKET, &cl->hkv, &cl->hwatch);
			if (!ready) {
				nats_Sleep(200);
				continue;
			}
			log_msg(LOG_INFO, "cluster: node %s joined (stream %s)", cl->node, STREAM);
			last_sync = last_reconcile = 0;
			atomic_store(&cl->reconnected, true);
		}
		if (atomic_exchange(&cl->reconnected, false))
			await_redeliveries(cl);
		watch_agents(cl);
		if (now_us() - last_sync >= 1000000) {
			watch_health(cl);
			sync_agents(cl);
			last_sync = now_us();
		}
		if (now_us() - last_reconcile >= 10000000) {
			reconcile_agents(cl);
			last_reconcile = now_us();
		}
		natsMsgList list = {0};
		jsErrCode jerr = 0;
		natsStatus s = natsSubscription_Fetch(&list, cl->sub, FETCH_BATCH, 500, &jerr);
		if (s == NATS_OK)
			for (int i = 0; i < list.Count; i++)
				receive_one(cl, list.Msgs[i]);
		natsMsgList_Destroy(&list);
		if (s != NATS_OK && s != NATS_TIMEOUT && s != last_fetch)
			log_msg(LOG_WARNING, "cluster: fetching for node %s: %s (%d)", cl->node,
				natsStatus_GetText(s), (int)jerr);
		last_fetch = s;
		if (s != NATS_OK && s != NATS_TIMEOUT)
			nats_Sleep(100);
	}
	return NULL;
}

/* ---------- the publisher ---------- */

static void on_pub_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
	(void)js;
	struct cluster *cl = closure;
	const char *id = NULL;
	natsMsgHeader_Get(msg, "Nats-Msg-Id", &id);
	pthread_mutex_lock(&cl->batch_lock);
	for (size_t i = 0; id && i < cl->nbatch; i++) {
		struct batch_entry *e = &cl->batch[i];
		if (!e->answered && strcmp(e->msg_id, id) == 0) {
			e->answered = true;
			e->result = pa && !pae ? NATS_OK : pae ? pae->Err : NATS_ERR;
			break;
		}
	}
	pthread_mutex_unlock(&cl->batch_lock);
	(void)pa;
	natsMsg_Destroy(msg);
}

/* The Nats-Msg-Id of a queued message: its msg_id, or for one sent with an
 * idempotency key "<from>@<node>/<key>", so a retry is stored once in JetStream even
 * when this node no longer remembers the key (SPEC §12). The key's bytes outside
 * printable ASCII, and '%', are written %XX: a header holds no line breaks. */
static void nats_msg_id(const struct cluster *cl, const struct bus_message *m, char *out,
			size_t size)
{
	if (!m->idem_key) {
		snprintf(out, size, "%s", m->msg_id);
		return;
	}
	int n = snprintf(out, size, "%s@%s/", m->from, cl->node);
	size_t at = n > 0 && (size_t)n < size ? (size_t)n : size - 1;
	for (const unsigned char *k = (const unsigned char *)m->idem_key; *k && at + 4 < size; k++) {
		if (*k > 0x20 && *k < 0x7f && *k != '%')
			out[at++] = (char)*k;
		else
			at += (size_t)snprintf(out + at, size - at, "%%%02X", *k);
	}
	out[at] = '\0';
}

/* The NATS message of a queued one: its subject, the sending node, the end of its
 * ttl (Busfs-Expires, microseconds since the epoch) and its Nats-Msg-Id (e->msg_id). */
static natsStatus outgoing_msg(struct cluster *cl, struct batch_entry *e, natsMsg **msg,
			       jsPubOptions *po)
{
	const struct bus_outgoing *out = &e->out;
	char subject[2 * BUS_NAME_MAX + 16];
	snprintf(subject, sizeof subject, "busfs.msg.%s.%s", out->node, out->agent);
	nats_msg_id(cl, out->m, e->msg_id, sizeof e->msg_id);
	jsPubOptions_Init(po);
	po->MsgId = e->msg_id;
	natsStatus s = natsMsg_Create(msg, subject, NULL, out->m->envelope, (int)out->m->len);
	if (s == NATS_OK)
		s = natsMsgHeader_Set(*msg, "Busfs-Node", cl->node);
	if (s == NATS_OK && out->m->expires_us) {
		char v[24];
		snprintf(v, sizeof v, "%" PRId64, out->m->expires_us);
		s = natsMsgHeader_Set(*msg, "Busfs-Expires", v);
	}
	return s;
}

/* Publishes one message and waits (--cluster-timeout) for JetStream's ack: NATS_OK
 * stored, NATS_TIMEOUT sent and not acknowledged, else not sent. */
static natsStatus publish_one(struct cluster *cl, struct batch_entry *e)
{
	natsMsg *msg = NULL;
	jsPubOptions po;
	natsStatus s = outgoing_msg(cl, e, &msg, &po);
	po.MaxWait = (int64_t)(cl->cfg.timeout_s * 1000);
	jsPubAck *ack = NULL;
	jsErrCode jerr = 0;
	if (s == NATS_OK)
		s = js_PublishMsg(&ack, cl->js, msg, &po, &jerr);
	jsPubAck_Destroy(ack);
	natsMsg_Destroy(msg);
	return s;
}

/* Publishes the claimed batch (asynchronously when it holds more than one) and waits
 * (--cluster-timeout) for every ack. An entry with no answer by then is NATS_TIMEOUT:
 * it was sent. */
static void publish_batch(struct cluster *cl)
{
	if (cl->nbatch == 1) {
		/* One message: a plain request is answered sooner than the async path
		 * (measured here: about 400 against 1,050 us on a 3-server cluster). */
		struct batch_entry *e = &cl->batch[0];
		natsStatus s = publish_one(cl, e);
		pthread_mutex_lock(&cl->batch_lock);
		e->answered = true;
		e->result = s;
		pthread_mutex_unlock(&cl->batch_lock);
		return;
	}
	natsStatus sent = NATS_OK;
	for (size_t i = 0; i < cl->nbatch; i++) {
		struct batch_entry *e = &cl->batch[i];
		natsMsg *msg = NULL;
		jsPubOptions po;
		natsStatus s = sent == NATS_OK ? outgoing_msg(cl, e, &msg, &po) : sent;
		if (s == NATS_OK)
			s = js_PublishMsgAsync(cl->js, &msg, &po);
		natsMsg_Destroy(msg);
		if (s != NATS_OK) {
			/* Not sent (no connection: nothing is buffered while away). */
			pthread_mutex_lock(&cl->batch_lock);
			e->answered = true;
			e->result = s;
			pthread_mutex_unlock(&cl->batch_lock);
			sent = s;
		}
	}
	jsPubOptions po;
	jsPubOptions_Init(&po);
	po.MaxWait = (int64_t)(cl->cfg.timeout_s * 1000);
	if (js_PublishAsyncComplete(cl->js, &po) != NATS_OK) {
		/* Sent and not acknowledged in time: drop them from libnats's list. */
		natsMsgList pending = {0};
		if (js_PublishAsyncGetPendingList(&pending, cl->js) == NATS_OK)
			natsMsgList_Destroy(&pending);
	}
	pthread_mutex_lock(&cl->batch_lock);
	for (size_t i = 0; i < cl->nbatch; i++)
		if (!cl->batch[i].answered) {
			cl->batch[i].answered = true;
			cl->batch[i].result = NATS_TIMEOUT;
		}
	pthread_mutex_unlock(&cl->batch_lock);
}

/* What a publish came to, for the store and for the send waiting on it. Under
 * cl->lock. */
static void conclude(struct cluster *cl, const struct bus_outgoing *out, natsStatus s)
{
	if (s == NATS_OK) {
		bus_outgoing_done(cl->bus, out->number, out->token);
		settle(cl, out->number, 0);
		return;
	}
	bool waited = false;
	for (struct parked_send *p = cl->parked; p && !waited; p = p->next)
		for (size_t i = 0; i < p->n && !waited; i++)
			waited = p->numbers[i] == out->number;
	if (waited && s == NATS_TIMEOUT) {
		/* Sent, never acknowledged: the sender hears ETIMEDOUT and this message is
		 * not published again. */
		bus_outgoing_done(cl->bus, out->number, out->token);
		settle(cl, out->number, ETIMEDOUT);
	} else {
		/* Not sent, or no one waits: again soon, until it is stored or its sender's
		 * deadline passes. */
		bus_outgoing_retry(cl->bus, out->number, out->token,
				   waited ? 0.1 : RETRY_DELAY_MS / 1000.0);
	}
	log_msg(LOG_INFO, "cluster: publish to %s@%s: %s", out->agent, out->node,
		natsStatus_GetText(s));
}

static void *publisher_main(void *arg)
{
	struct cluster *cl = arg;
	for (;;) {
		pthread_mutex_lock(&cl->lock);
		if (cl->stop) {
			pthread_mutex_unlock(&cl->lock);
			break;
		}
		expire_parked(cl, false);
		answer_writes(cl, false);
		pthread_mutex_unlock(&cl->lock);
		uint_fast64_t seen = atomic_load(&cl->kicks);

		/* Up to PUBLISH_BATCH queued messages, published together. */
		pthread_mutex_lock(&cl->batch_lock);
		cl->nbatch = 0;
		pthread_mutex_unlock(&cl->batch_lock);
		struct batch_entry e = {0};
		while (cluster_connected(cl) && cl->nbatch < PUBLISH_BATCH &&
		       bus_outgoing_claim(cl->bus, cl->cfg.timeout_s + 30, &e.out) == 0) {
			pthread_mutex_lock(&cl->batch_lock);
			cl->batch[cl->nbatch++] = e;
			pthread_mutex_unlock(&cl->batch_lock);
			memset(&e, 0, sizeof e);
		}
		if (!cl->nbatch) {
			/* Nothing ready (or no connection): sleep until a send is parked (unless
			 * one was since `seen`: its signal came before this wait). */
			struct timespec until;
			clock_gettime(CLOCK_REALTIME, &until);
			until.tv_nsec += 50 * 1000000L;
			if (until.tv_nsec >= 1000000000L) {
				until.tv_sec++;
				until.tv_nsec -= 1000000000L;
			}
			pthread_mutex_lock(&cl->lock);
			if (!cl->stop && atomic_load(&cl->kicks) == seen)
				pthread_cond_timedwait(&cl->cond, &cl->lock, &until);
			pthread_mutex_unlock(&cl->lock);
			continue;
		}
		publish_batch(cl);
		pthread_mutex_lock(&cl->lock);
		for (size_t i = 0; i < cl->nbatch; i++)
			conclude(cl, &cl->batch[i].out, cl->batch[i].result);
		pthread_mutex_unlock(&cl->lock);
		pthread_mutex_lock(&cl->batch_lock);
		for (size_t i = 0; i < cl->nbatch; i++)
			bus_outgoing_release(&cl->batch[i].out);
		cl->nbatch = 0;
		pthread_mutex_unlock(&cl->batch_lock);
	}
	return NULL;
}

/* ---------- life cycle ---------- */

static void on_disconnected(natsConnection *nc, void *closure)
{
	(void)nc;
	struct cluster *cl = closure;
	log_msg(LOG_WARNING, "cluster: node %s lost its NATS connection; local sends go on, "
		"remote ones wait or time out", cl->node);
}

static void on_connected(natsConnection *nc, void *closure)
{
	(void)nc;
	struct cluster *cl = closure;
	log_msg(LOG_INFO, "cluster: node %s connected to NATS", cl->node);
}

static void on_reconnected(natsConnection *nc, void *closure)
{
	(void)nc;
	struct cluster *cl = closure;
	atomic_store(&cl->reconnected, true);
	log_msg(LOG_INFO, "cluster: node %s reconnected", cl->node);
}

struct cluster *cluster_start(struct bus *bus, const struct cluster_config *cfg)
{
	struct cluster *cl = calloc(1, sizeof *cl);
	if (!cl)
		return NULL;
	cl->bus = bus;
	cl->cfg = *cfg;
	cl->next_remote_id = 1;
	cl->health_ttl_s = bus_config(bus)->health_ttl_s;
	snprintf(cl->node, sizeof cl->node, "%s", cfg->node);
	snprintf(cl->subject_prefix, sizeof cl->subject_prefix, "busfs.msg.%s.", cfg->node);
	pthread_mutex_init(&cl->lock, NULL);
	pthread_mutex_init(&cl->batch_lock, NULL);
	pthread_cond_init(&cl->cond, NULL);
	bus_set_node(bus, cfg->node);

	char *urls = strdup(cfg->urls);
	const char *servers[16];
	int nservers = 0;
	for (char *save = NULL, *u = urls ? strtok_r(urls, ",", &save) : NULL; u && nservers < 16;
	     u = strtok_r(NULL, ",", &save))
		servers[nservers++] = u;
	natsStatus s = urls && nservers ? natsOptions_Create(&cl->opts) : NATS_ERR;
	if (s == NATS_OK)
		s = natsOptions_SetServers(cl->opts, servers, nservers);
	if (s == NATS_OK)
		s = natsOptions_SetMaxReconnect(cl->opts, -1);
	if (s == NATS_OK)
		s = natsOptions_SetReconnectWait(cl->opts, 250);
	if (s == NATS_OK) /* with a callback, a first connect that fails does not block */
		s = natsOptions_SetRetryOnFailedConnect(cl->opts, true, on_connected, cl);
	if (s == NATS_OK)
		s = natsOptions_SetTimeout(cl->opts, 2000);
	if (s == NATS_OK)
		s = natsOptions_SetPingInterval(cl->opts, 1000);
	if (s == NATS_OK)
		s = natsOptions_SetMaxPingsOut(cl->opts, 2);
	if (s == NATS_OK) /* the servers the operator listed, not the ones they gossip */
		s = natsOptions_SetIgnoreDiscoveredServers(cl->opts, true);
	if (s == NATS_OK) /* publishes fail while reconnecting, never go out late */
		s = natsOptions_SetReconnectBufSize(cl->opts, 1);
	if (s == NATS_OK)
		s = natsOptions_SetDisconnectedCB(cl->opts, on_disconnected, cl);
	if (s == NATS_OK)
		s = natsOptions_SetReconnectedCB(cl->opts, on_reconnected, cl);
	if (s == NATS_OK) {
		s = natsConnection_Connect(&cl->nc, cl->opts);
		if (s == NATS_NOT_YET_CONNECTED)
			s = NATS_OK; /* it keeps trying in the background */
	}
	free(urls);
	jsOptions jo;
	jsOptions_Init(&jo);
	jo.Wait = (int64_t)(cfg->timeout_s * 1000);
	if (jo.Wait > API_WAIT_MS)
		jo.Wait = API_WAIT_MS;
	jo.PublishAsync.AckHandler = on_pub_ack;
	jo.PublishAsync.AckHandlerClosure = cl;
	jo.PublishAsync.MaxPending = PUBLISH_BATCH;
	if (s == NATS_OK)
		s = natsConnection_JetStream(&cl->js, cl->nc, &jo);
	if (s != NATS_OK) {
		fprintf(stderr, "busfs: --cluster %s: %s\n", cfg->urls, natsStatus_GetText(s));
		cluster_stop(cl);
		return NULL;
	}
	cl->publisher_started = pthread_create(&cl->publisher, NULL, publisher_main, cl) == 0;
	cl->receiver_started = pthread_create(&cl->receiver, NULL, receiver_main, cl) == 0;
	if (!cl->publisher_started || !cl->receiver_started) {
		fprintf(stderr, "busfs: cannot start the cluster threads\n");
		cluster_stop(cl);
		return NULL;
	}
	log_msg(LOG_INFO, "cluster: node %s, NATS %s", cl->node, cfg->urls);
	return cl;
}

void cluster_stop(struct cluster *cl)
{
	if (!cl)
		return;
	pthread_mutex_lock(&cl->lock);
	cl->stop = true;
	pthread_cond_broadcast(&cl->cond);
	pthread_mutex_unlock(&cl->lock);
	/* Closed first: a publish, fetch or KV request under way ends at once, instead of
	 * holding the stop for its timeout (up to --cluster-timeout, 5 s per KV call). */
	if (cl->nc)
		natsConnection_Close(cl->nc);
	if (cl->publisher_started)
		pthread_join(cl->publisher, NULL);
	if (cl->receiver_started)
		pthread_join(cl->receiver, NULL);
	pthread_mutex_lock(&cl->lock);
	expire_parked(cl, true);
	answer_writes(cl, true);
	pthread_mutex_unlock(&cl->lock);
	if (cl->sub)
		natsSubscription_Destroy(cl->sub);
	if (cl->hwatch)
		kvWatcher_Destroy(cl->hwatch);
	if (cl->awatch)
		kvWatcher_Destroy(cl->awatch);
	if (cl->hkv)
		kvStore_Destroy(cl->hkv);
	if (cl->kv)
		kvStore_Destroy(cl->kv);
	jsCtx_Destroy(cl->js);
	natsConnection_Close(cl->nc);
	natsConnection_Destroy(cl->nc);
	natsOptions_Destroy(cl->opts);
	for (size_t i = 0; i < cl->nremote; i++)
		remote_free(&cl->remote[i]);
	free(cl->remote);
	free(cl->delayed);
	for (size_t i = 0; i < cl->nhealth; i++) {
		free(cl->health[i].key);
		free(cl->health[i].text);
	}
	free(cl->health);
	names_free(&cl->local);
	/* libnats calls back (disconnected, a late publish ack) from its own threads,
	 * even after the objects are destroyed: cl lives until every one has ended. */
	if (nats_CloseAndWait(10000) != NATS_OK) {
		log_msg(LOG_WARNING, "cluster: the NATS library did not stop within 10 s");
		return; /* a callback may still come: cl stays */
	}
	pthread_cond_destroy(&cl->cond);
	pthread_mutex_destroy(&cl->batch_lock);
	pthread_mutex_destroy(&cl->lock);
	free(cl);
}

/*
 * gen_store_seeds.c — writes the seed corpus of fuzz_store: real stores, made by the
 * public bus API, in the harness's input form (see fuzz_store.c).
 *
 * Not part of `make fuzz`; rerun it when the record formats change:
 *   cc -std=c11 -D_GNU_SOURCE -Iinclude tests/fuzz/gen_store_seeds.c core/[a-z]*.c \
 *      -ljansson -lm -pthread -o /tmp/gen && /tmp/gen tests/fuzz/corpus/store
 * A fixed store id and a fake clock make the output the same at every run.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "busfs/bus.h"
#include "busfs/clock.h"
#include "busfs/remote.h"
#include "busfs/store.h"

static int64_t now = INT64_C(1795410312123456);
static int64_t fake_now(void) { return now++; }

static void die(const char *what, const char *why)
{
	fprintf(stderr, "gen_store_seeds: %s: %s\n", what, why);
	exit(1);
}

static void ok(int rc, const struct bus_error *err, const char *what)
{
	if (rc < 0)
		die(what, err->reason);
}

static size_t read_file(const char *path, unsigned char **out)
{
	FILE *f = fopen(path, "rb");
	*out = NULL;
	if (!f)
		return 0;
	unsigned char *p = malloc(1 << 24);
	size_t n = fread(p, 1, 1 << 24, f);
	fclose(f);
	*out = p;
	return n;
}

/* Appends the records of a store file (after its 16-byte header) as u16 len + bytes. */
static size_t records(const char *path, FILE *out)
{
	unsigned char *p;
	size_t n = read_file(path, &p), at = 16, count = 0;
	while (p && at + 8 <= n) {
		size_t len = p[at] | p[at + 1] << 8 | (size_t)p[at + 2] << 16 | (size_t)p[at + 3] << 24;
		if (len == 0 || len > 65535 || at + 8 + len > n)
			break;
		unsigned char l[2] = {(unsigned char)len, (unsigned char)(len >> 8)};
		fwrite(l, 1, 2, out);
		fwrite(p + at + 8, 1, len, out);
		at += 8 + len;
		count++;
	}
	free(p);
	return count;
}

static size_t count_records(const char *path)
{
	FILE *f = fopen("/dev/null", "wb");
	size_t n = records(path, f);
	fclose(f);
	return n;
}

static void emit(const char *store, const char *outdir, const char *name, unsigned flags,
		 const char *tail, size_t tail_len)
{
	char snap[4200], journal[4200], path[4200];
	snprintf(snap, sizeof snap, "%s/snapshot", store);
	snprintf(journal, sizeof journal, "%s/journal", store);
	snprintf(path, sizeof path, "%s/%s", outdir, name);
	size_t nsnap = access(snap, F_OK) == 0 ? count_records(snap) : 0;
	if (nsnap)
		flags |= 1;
	if (nsnap > 255)
		die(name, "too many snapshot records for one K byte");
	FILE *out = fopen(path, "wb");
	if (!out)
		die(path, strerror(errno));
	unsigned char head[2] = {(unsigned char)flags, (unsigned char)nsnap};
	fwrite(head, 1, 2, out);
	if (nsnap)
		records(snap, out);
	records(journal, out);
	if (tail)
		fwrite(tail, 1, tail_len, out);
	fclose(out);
}

static void rmrf(const char *dir)
{
	char cmd[4300];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		die("rm", dir);
}

static struct bus *open_store_with(const char *store, uint32_t max_deliver)
{
	mkdir(store, 0700);
	char path[4200];
	snprintf(path, sizeof path, "%s/format", store);
	FILE *f = fopen(path, "w");
	if (!f)
		die(path, strerror(errno));
	fputs("busfs-store 1\nid 0000abcd\n", f);
	fclose(f);
	/* A store with a format file has its journal: an empty one of generation 1. */
	unsigned char h[16] = "BUSFSJ2";
	h[8] = 1;
	uint32_t crc = crc32_compute(h, 12);
	for (int i = 0; i < 4; i++)
		h[12 + i] = (unsigned char)(crc >> (8 * i));
	snprintf(path, sizeof path, "%s/journal", store);
	f = fopen(path, "w");
	if (!f || fwrite(h, 1, sizeof h, f) != sizeof h)
		die(path, strerror(errno));
	fclose(f);
	struct bus_config cfg = {.store_dir = store, .store_max_bytes = 1 << 30,
				 .max_deliver = max_deliver};
	struct bus *bus;
	struct bus_error err = {0};
	ok(bus_open(&cfg, &bus, &err), &err, "bus_open");
	return bus;
}

static struct bus *open_store(const char *store) { return open_store_with(store, 0); }

static void send(struct bus *bus, uint64_t from, const char *rec)
{
	struct buf pending;
	buf_init(&pending);
	unsigned d;
	struct bus_error err = {0};
	ok(bus_send_write(bus, from, 1000, &pending, rec, strlen(rec), &d, &err), &err, rec);
	buf_free(&pending);
}

static void draft(struct bus *bus, uint64_t from, const char *to, const char *body, size_t len)
{
	struct bus_draft *d;
	struct bus_error err = {0};
	ok(bus_draft_open(bus, from, to, 1000, &d, &err), &err, "draft open");
	ok(bus_draft_write(bus, d, body, len, &err), &err, "draft write");
	ok(bus_draft_flush(bus, d, &err), &err, "draft flush");
	bus_draft_close(bus, d);
}

static uint64_t agent(struct bus *bus, const char *name)
{
	struct bus_agent_info info;
	struct bus_error err = {0};
	ok(bus_agent_create(bus, name, 1000, 1000, &info, &err), &err, name);
	return info.id;
}

static int first_msg(void *ctx, const struct bus_message *m)
{
	struct bus_message **out = ctx;
	if (!*out)
		*out = (struct bus_message *)m;
	return 1;
}

static void ack_first(struct bus *bus, uint64_t id)
{
	struct bus_message *m = NULL;
	bus_inbox_list(bus, id, 0, first_msg, &m);
	if (!m)
		die("ack", "no message");
	struct bus_error err = {0};
	ok(bus_ack(bus, id, m->number, NULL, 1000, &err), &err, "ack");
}

/* Agents, drafts (text, JSON, binary, broadcast), send records with every field, an
 * ack with a correlation_id, drain, health, a heartbeat, rules, a rejection, a removal. */
static void basic(struct bus *bus)
{
	struct bus_error err = {0};
	uint64_t alice = agent(bus, "alice"), bob = agent(bus, "bob"), carol = agent(bus, "carol");
	draft(bus, alice, "bob", "build finished\n", 15);
	draft(bus, alice, "bob", "{\"step\": 3,\n \"ok\": true}\n", 26);
	draft(bus, alice, "all", "\x00\xff binary", 9);
	send(bus, bob, "{\"to\":\"alice\",\"payload\":{\"n\":1},\"type\":\"task\",\"requires_ack\":true,"
		       "\"priority\":\"urgent\",\"correlation_id\":\"c-1\"}\n"
		       "{\"to\":\"all\",\"payload\":\"hi\",\"from\":\"bob\"}\n");
	ack_first(bus, alice);
	ack_first(bus, bob);
	ok(bus_ctl(bus, carol, 1000, "drain", 5, &err), &err, "drain");
	const char *h1 = "{\"status\":\"degraded\",\"reason\":\"disk\",\"disk_pct\":91}";
	const char *h2 = "healthy all good";
	ok(bus_health_report(bus, alice, 1000, h1, strlen(h1), &err), &err, "health");
	ok(bus_health_report(bus, bob, 1000, h2, strlen(h2), &err), &err, "health");
	ok(bus_health_beat(bus, bob, 1000, &err), &err, "beat");
	const char *rules = "slow coordination.time p95 > 10000 critical for=10\n"
			    "few jobs.done count < 1\n";
	ok(bus_rules_write(bus, rules, strlen(rules), true, &err), &err, "rules");
	struct bus_error note = {.code = ENOENT};
	snprintf(note.reason, sizeof note.reason, "recipient nobody is not registered");
	bus_log_error(bus, "alice", "write", "agents/alice/outbox/nobody", 1000, &note);
	uint64_t dave = agent(bus, "dave");
	(void)dave;
	ok(bus_agent_remove(bus, "dave", 1000, &err), &err, "remove");
}

/* A user rule that fires for alice, so REC_ALERT records exist. */
static void alerts(struct bus *bus)
{
	struct bus_error err = {0};
	uint64_t alice = agent(bus, "alice");
	agent(bus, "bob");
	const char *rules = "busy jobs.done count > 0 critical\n";
	ok(bus_rules_write(bus, rules, strlen(rules), true, &err), &err, "rules");
	const char *pts = "jobs.done 1\njobs.done 2 ms phase=build\n";
	ok(bus_metrics_write(bus, alice, 1000, pts, strlen(pts), &err), &err, "metrics");
	bus_tick(bus);
}

/* Leases, a nak's delay, dead letters, a retry, a ttl and idempotency keys, so every
 * record kind of SPEC §10 is in the corpus (REC_LEASE ... REC_SNAP_DEDUPE). */
static void leases(struct bus *bus)
{
	struct bus_error err = {0};
	uint64_t alice = agent(bus, "alice"), bob = agent(bus, "bob");
	send(bus, alice, "{\"to\":\"bob\",\"payload\":1,\"idempotency_key\":\"k-1\"}\n"
			 "{\"to\":\"bob\",\"payload\":2,\"ttl_s\":60}\n"
			 "{\"to\":\"bob\",\"payload\":3}\n{\"to\":\"bob\",\"payload\":4}\n");
	send(bus, alice, "{\"to\":\"bob\",\"payload\":1,\"idempotency_key\":\"k-1\"}\n");
	struct buf out;
	buf_init(&out);
	bool draining;
	char cmd[160];
	for (int i = 0; i < 3; i++) {
		buf_reset(&out);
		ok(bus_claim(bus, bob, 1000, &out, &draining, &err), &err, "claim");
	}
	/* Leases 1..3 hold payloads 1..3: extend the first, nak the second with a delay,
	 * nak the third to death (max_deliver 1) and retry it. */
	snprintf(cmd, sizeof cmd, "extend MSG-20261123-050512-0000abcd-00000000000000000001 1 30");
	ok(bus_ctl(bus, bob, 1000, cmd, strlen(cmd), &err), &err, "extend");
	snprintf(cmd, sizeof cmd, "nak MSG-20261123-050512-0000abcd-00000000000000000002 2 5");
	ok(bus_ctl(bus, bob, 1000, cmd, strlen(cmd), &err), &err, "nak");
	snprintf(cmd, sizeof cmd, "nak MSG-20261123-050512-0000abcd-00000000000000000003 3");
	ok(bus_ctl(bus, bob, 1000, cmd, strlen(cmd), &err), &err, "nak to dead");
	snprintf(cmd, sizeof cmd, "retry MSG-20261123-050512-0000abcd-00000000000000000003");
	ok(bus_ctl(bus, bob, 1000, cmd, strlen(cmd), &err), &err, "retry");
	buf_reset(&out);
	ok(bus_claim(bus, bob, 1000, &out, &draining, &err), &err, "claim");
	snprintf(cmd, sizeof cmd, "nak MSG-20261123-050512-0000abcd-00000000000000000003 4");
	ok(bus_ctl(bus, bob, 1000, cmd, strlen(cmd), &err), &err, "nak to dead again");
	snprintf(cmd, sizeof cmd, "ack MSG-20261123-050512-0000abcd-00000000000000000001 1");
	ok(bus_ctl(bus, bob, 1000, cmd, strlen(cmd), &err), &err, "ack");
	buf_free(&out);
}

/* Messages to and from another node (remote.h): one published, one queued, one being
 * published; one fetched from there and acked (its ack queued back). */
static void remote(struct bus *bus)
{
	struct bus_error err = {0};
	bus_set_node(bus, "a");
	ok(bus_remote_known(bus, "bob@b", true), &err, "known");
	uint64_t alice = agent(bus, "alice");
	send(bus, alice, "{\"to\":\"bob@b\",\"payload\":1}\n{\"to\":\"bob@b\",\"payload\":2}\n"
			 "{\"to\":\"bob@b\",\"payload\":3,\"requires_ack\":true}\n");
	struct bus_outgoing out = {0};
	ok(bus_outgoing_claim(bus, 30, &out), &err, "claim outgoing");
	ok(bus_outgoing_done(bus, out.number, out.token), &err, "done");
	bus_outgoing_release(&out);
	ok(bus_outgoing_claim(bus, 30, &out), &err, "claim outgoing");
	bus_outgoing_release(&out);
	static const char env[] =
		"{\"version\":1,\"msg_id\":\"MSG-20261123-050512-0badcafe-00000000000000000009\","
		"\"from\":\"bob\",\"to\":\"alice@a\",\"timestamp\":\"2026-11-23T05:05:12.000001Z\","
		"\"sequence\":9,\"type\":\"message\",\"payload\":\"hi\",\"requires_ack\":true,"
		"\"priority\":\"normal\"}\n";
	ok(bus_remote_receive(bus, "alice", "b", env, sizeof env - 1, 0, &err), &err, "receive");
	char other[sizeof env];
	memcpy(other, env, sizeof env);
	memcpy(strstr(other, "0009\""), "0010", 4);
	ok(bus_remote_receive(bus, "nobody", "b", other, sizeof other - 1, 0, &err) == -ENOENT ? 0
											 : -1,
	   &err, "undeliverable");
	ack_first(bus, alice);
}

int main(int argc, char **argv)
{
	if (argc != 2)
		die("usage", "gen_store_seeds OUTDIR");
	bus_clock_set(fake_now);
	char tmp[] = "/tmp/busfs-gen-seeds-XXXXXX";
	if (!mkdtemp(tmp))
		die("mkdtemp", strerror(errno));
	char store[4200];
	snprintf(store, sizeof store, "%s/store", tmp);

	struct bus *bus = open_store(store);
	basic(bus);
	emit(store, argv[1], "journal-basic", 0, NULL, 0);
	emit(store, argv[1], "journal-torn", 8, "\x40\x00\x00\x00\x12\x34", 6);
	emit(store, argv[1], "journal-badcrc", 16, NULL, 0);
	emit(store, argv[1], "journal-v2", 128, NULL, 0);
	emit(store, argv[1], "journal-v2-badcrc", 128 | 16, NULL, 0);
	bus_compact(bus);
	send(bus, 2, "{\"to\":\"alice\",\"payload\":[1,2.5e3,null]}");
	emit(store, argv[1], "snapshot-and-journal", 0, NULL, 0);
	emit(store, argv[1], "snapshot-noend", 4, NULL, 0);
	emit(store, argv[1], "snapshot-and-journal-v2", 128, NULL, 0);
	emit(store, argv[1], "journal-covered", 2, NULL, 0);
	bus_close(bus);
	rmrf(store);

	bus = open_store(store);
	alerts(bus);
	emit(store, argv[1], "journal-alerts", 0, NULL, 0);
	bus_compact(bus);
	emit(store, argv[1], "snapshot-alerts", 0, NULL, 0);
	bus_close(bus);
	rmrf(store);

	bus = open_store_with(store, 1);
	leases(bus);
	emit(store, argv[1], "journal-leases", 0, NULL, 0);
	bus_compact(bus);
	emit(store, argv[1], "snapshot-leases", 0, NULL, 0);
	bus_close(bus);
	rmrf(store);

	bus = open_store(store);
	remote(bus);
	emit(store, argv[1], "journal-remote", 0, NULL, 0);
	bus_compact(bus);
	emit(store, argv[1], "snapshot-remote", 0, NULL, 0);
	bus_close(bus);
	rmrf(store);

	bus = open_store(store);
	emit(store, argv[1], "empty", 0, NULL, 0);
	emit(store, argv[1], "bad-format", 32, NULL, 0);
	emit(store, argv[1], "bad-header", 64, NULL, 0);
	bus_close(bus);
	rmrf(tmp);
	return 0;
}

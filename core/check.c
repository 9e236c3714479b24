/* check.c — the offline check (busfs --check) and salvage (busfs --salvage) of a
 * store. Both load it with the same record table the server uses (records.c), so
 * what --check accepts is exactly what a start accepts. */
#include <dirent.h>
#include <fcntl.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bus_impl.h"
#include "busfs/json.h"
#include "busfs/regfile.h"

/* ---------- offline check ---------- */

/* Files a store holds; anything else in it was put there by someone else. A store
 * file of the wrong type (a FIFO as the lock, say) counts in *wrong_type. */
static int check_stray(const char *dir, struct buf *report, int *wrong_type)
{
	static const char *const known[] = {
		"lock", "format", "journal", "snapshot", "journal.tmp", "snapshot.tmp", "mark",
		"metrics", "alerts", "events", ".", "..",
	};
	DIR *d = opendir(dir);
	int problems = 0;
	struct dirent *e;
	while (d && (e = readdir(d))) {
		bool ok = false;
		for (size_t i = 0; i < sizeof known / sizeof known[0] && !ok; i++)
			ok = strcmp(e->d_name, known[i]) == 0;
		if (!ok && strncmp(e->d_name, "damaged-", 8) == 0) {
			buf_printf(report, "note: %s/%s holds files a salvage replaced\n", dir,
				   e->d_name);
			ok = true;
		}
		if (!ok) {
			buf_printf(report, "FAIL: %s/%s is not a store file\n", dir, e->d_name);
			problems++;
			continue;
		}
		struct stat st;
		bool is_dir = strcmp(e->d_name, "metrics") == 0 || strcmp(e->d_name, "alerts") == 0 ||
			      strcmp(e->d_name, "events") == 0;
		if (e->d_name[0] == '.' || strncmp(e->d_name, "damaged-", 8) == 0 ||
		    fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue;
		if (is_dir ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode)) {
			buf_printf(report, "FAIL: %s/%s is %s, not a %s; busfs refuses it\n", dir,
				   e->d_name, regfile_kind(dirfd(d), e->d_name),
				   is_dir ? "directory" : "regular file");
			problems++;
			(*wrong_type)++;
		}
	}
	if (d)
		closedir(d);
	return problems;
}

struct log_check {
	uint64_t lines, bad, first_bad;
};

static int check_line(void *ctx, uint64_t off, const char *line, size_t len)
{
	struct log_check *c = ctx;
	c->lines++;
	if (!json_is_value(line, len) || len == 0 || line[0] != '{') {
		if (!c->bad++)
			c->first_bad = off;
	}
	return 0;
}

/* A points or alerts log: contiguous segments of whole JSON lines. A segment that is
 * not a regular file counts in *wrong_type. */
static int check_log(const char *dir, const char *sub, const char *prefix, struct buf *report,
		     int *wrong_type)
{
	char path[4200];
	struct stat st;
	snprintf(path, sizeof path, "%s/%s", dir, sub);
	if (lstat(path, &st) < 0)
		return 0;
	struct seglog_config cfg = {.dir = path, .prefix = prefix, .readonly = true};
	struct seglog *l = NULL;
	struct bus_error err = {0};
	if (!S_ISDIR(st.st_mode))
		return 0; /* check_stray reports it */
	if (seglog_open(&cfg, 0, &l, &err) < 0) {
		if (err.code == EMEDIUMTYPE)
			(*wrong_type)++;
		buf_printf(report, "FAIL: %s: %s\n", path, err.reason[0] ? err.reason
							       : "not a directory");
		return 1;
	}
	struct log_check c = {0};
	seglog_scan(l, check_line, &c);
	buf_printf(report, "%s: %" PRIu64 " line(s) in %zu segment(s), offsets %" PRIu64 "..%" PRIu64
		   "\n", path, c.lines, seglog_segments(l), seglog_start(l), seglog_end(l));
	seglog_close(l);
	if (c.bad)
		buf_printf(report, "FAIL: %s: %" PRIu64 " line(s) are not JSON objects, the first at "
			   "offset %" PRIu64 "\n", path, c.bad, c.first_bad);
	return c.bad ? 1 : 0;
}

static int check_message(struct bus *bus, const struct agent *a, const char *place,
			 const struct bus_message *m, uint64_t *last, struct buf *report)
{
	int problems = 0;
	if (m->number > bus->counter || m->number <= *last) {
		buf_printf(report, "FAIL: %s/%s: message %" PRIu64 " out of order or beyond the "
			   "counter %" PRIu64 "\n", a->name, place, m->number, bus->counter);
		problems++;
	}
	if (m->sequence == 0 || m->sequence > bus_pair_sequence(bus, m->from, m->to)) {
		buf_printf(report, "FAIL: %s/%s: message %" PRIu64 " has sequence %" PRIu64
			   " beyond its pair's\n", a->name, place, m->number, m->sequence);
		problems++;
	}
	/* A message from another node keeps the msg_id its node gave it. */
	bool own_id = message_id_number(m->msg_id) == m->number ||
		      (strchr(m->from, '@') && message_id_number(m->msg_id));
	if (!own_id || m->len == 0 ||
	    m->envelope[m->len - 1] != '\n' || !json_is_value(m->envelope, m->len - 1) ||
	    strcmp(m->to, a->name) != 0) {
		buf_printf(report, "FAIL: %s/%s: message %" PRIu64 " is malformed\n", a->name, place,
			   m->number);
		problems++;
	}
	if (m->in_inflight && (m->token == 0 || m->token > bus->last_token)) {
		buf_printf(report, "FAIL: %s/inflight: message %" PRIu64 " has lease token %" PRIu64
			   " beyond the last %" PRIu64 "\n", a->name, m->number, m->token,
			   bus->last_token);
		problems++;
	}
	*last = m->number;
	return problems;
}

int bus_check_store(const char *dir, struct buf *report)
{
	struct bus_config cfg = {.store_dir = dir};
	struct bus *bus = bus_alloc(&cfg);
	struct bus_error err = {0};
	struct store_load_report rep;
	if (!bus)
		return -ENOMEM;
	int rc = store_open(dir, true, &bus->store, &err);
	if (rc == 0)
		rc = store_load(bus->store, bus_apply_record, bus, &rep, &err);
	if (rc < 0) {
		buf_printf(report, "FAIL: %s\n", err.reason);
		bus_free(bus);
		return rc;
	}
	int problems = 0;
	buf_printf(report, "store %s (id %08x): %" PRIu64 " snapshot record(s), %" PRIu64
		   " journal record(s)%s\n", dir, store_id(bus->store), rep.snapshot_records,
		   rep.journal_records, rep.journal_ignored ? " (journal covered by snapshot)" : "");
	bus_records_report(bus, report);
	if (rep.torn_bytes)
		buf_printf(report, "note: %" PRIu64 " byte(s) of a torn final record will be cut at "
			   "the next start\n", rep.torn_bytes);
	/* Every message an agent holds (pending, leased, dead): number within the counter,
	 * sequence within its pair, a whole envelope; a lease's token within the counter. */
	static const char *const place_names[] = {"outbox", "inbox", "inflight", "dead"};
	for (size_t k = 0; k < bus->nagents; k++) {
		struct agent *a = bus->by_id[k];
		for (enum bus_place p = BUS_INBOX; p <= BUS_DEAD; p++) {
			const struct inbox *in = agent_place(a, p);
			uint64_t last = 0;
			for (size_t i = in->head; i < in->tail; i++) {
				struct bus_message *m = in->msgs[i];
				if (m)
					problems += check_message(bus, a, place_names[p], m, &last, report);
			}
		}
	}
	buf_printf(report, "%zu agent(s), %" PRIu64 " pending message(s) (%" PRIu64 " leased), %"
		   PRIu64 " dead letter(s), counter %" PRIu64 ", last lease token %" PRIu64
		   ", %zu sender/recipient pair(s)\n", bus->nagents, bus->pending, bus->leased,
		   bus->dead, bus->counter, bus->last_token, bus->seqs.count);
	int wrong_type = 0;
	problems += check_stray(dir, report, &wrong_type);
	problems += check_log(dir, "metrics", "points", report, &wrong_type);
	problems += check_log(dir, "alerts", "alerts", report, &wrong_type);
	problems += check_log(dir, "events", "events", report, &wrong_type);
	buf_printf(report, problems ? "FAIL: %d problem(s)\n" : "OK\n", problems);
	bus_free(bus);
	return wrong_type ? -EMEDIUMTYPE : problems ? -EIO : 0;
}

/* ---------- salvage ---------- */

static int salvage_damaged(const char *dir, struct buf *report)
{
	struct bus_config cfg = {.store_dir = dir};
	struct bus *bus = bus_alloc(&cfg);
	struct bus_error err = {0};
	struct store_salvage_report rep;
	if (!bus)
		return -ENOMEM;
	int rc = store_open(dir, false, &bus->store, &err);
	if (rc == 0)
		rc = store_salvage(bus->store, bus_apply_record, bus, &rep, report, &err);
	if (rc < 0) {
		buf_printf(report, "FAIL: %s\n", err.reason);
	} else {
		buf_printf(report, "salvaged %s: kept %" PRIu64 " snapshot and %" PRIu64 " journal "
			   "record(s); lost %" PRIu64 " record(s) that do not apply and %" PRIu64
			   " unreadable byte(s); the damaged files are in %s/%s\n", dir,
			   rep.snapshot_kept, rep.journal_kept, rep.dropped_records, rep.lost_bytes,
			   dir, rep.moved_to);
		buf_printf(report, "new store id %08x (was %08x): msg_ids stay unique; what was "
			   "lost may have held messages, agents and sequence numbers that are not "
			   "counted here\n", rep.new_id, rep.old_id);
	}
	bus_free(bus);
	return rc;
}

/* Opens and loads dir into a fresh bus and frees it: 0, or the load's error in err. */
static int try_load(const char *dir, struct bus_error *err)
{
	struct bus_config cfg = {.store_dir = dir};
	struct bus *bus = bus_alloc(&cfg);
	if (!bus)
		return bus_fail(err, ENOMEM, "out of memory");
	int rc = store_open(dir, false, &bus->store, err);
	if (rc == 0)
		rc = store_load(bus->store, bus_apply_record, bus, NULL, err);
	bus_free(bus); /* releases the lock before a salvage takes it again */
	return rc;
}

/* A record refused half-way can leave part of its change in the bus the salvage
 * applies to, so a later record that applied there may not apply without it: the
 * rebuilt store is loaded again, and salvaged again until it loads (each pass drops
 * at least one record). */
int bus_salvage_store(const char *dir, struct buf *report)
{
	struct bus_error err = {0};
	int rc = try_load(dir, &err);
	if (rc == 0) {
		buf_printf(report, "store %s is not damaged; nothing to salvage\n", dir);
		return 0;
	}
	for (int pass = 0; pass < 64; pass++) {
		if (rc != -EBADMSG && rc != -EMEDIUMTYPE) {
			buf_printf(report, "FAIL: %s\n", err.reason);
			return rc;
		}
		buf_printf(report, "damaged: %s\n", err.reason);
		rc = salvage_damaged(dir, report);
		if (rc < 0)
			return rc;
		err = (struct bus_error){0};
		rc = try_load(dir, &err);
		if (rc == 0)
			return 0;
	}
	buf_printf(report, "FAIL: %s still does not load: %s\n", dir, err.reason);
	return -EBADMSG;
}

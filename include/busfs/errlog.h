/* errlog.h — a capped JSONL log of rejected operations (the `errors` files).
 *
 * It keeps the newest `cap` lines; the file a reader sees is exactly the lines kept,
 * so its size is honest. Not persisted: it is a window on recent refusals.
 *
 * The top-level log also shares itself fairly between uids (errlog_limit): each uid
 * keeps at most its newest `per_uid` lines, and a uid refused more than `per_second`
 * times within one second of the clock has the rest counted instead of logged; once
 * that second is over, one record says how many were left out:
 *   {"timestamp":T,"uid":U,"suppressed":N,"reason":"..."}
 * where T is the time of the last refusal it counts. One uid, the server's own (the
 * operator's), is spared both limits, so a single-user bus logs every refusal. */
#ifndef BUSFS_ERRLOG_H
#define BUSFS_ERRLOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "busfs/buf.h"

/* One uid's share of a limited log. */
struct errlog_uid {
	uid_t uid;
	size_t lines;          /* its lines in the log now */
	int64_t second;        /* the clock second of its last refusal */
	unsigned in_second;    /* refusals within that second */
	uint64_t suppressed;   /* left out, not yet reported */
	int64_t last_suppressed_us;
};

struct errlog {
	struct buf text;
	size_t lines;
	size_t cap;
	/* Limits by uid (0: none), with the uid of each line, oldest first. */
	size_t per_uid;
	unsigned per_second;
	uid_t spared;
	uid_t *line_uid;
	size_t line_uid_cap;
	struct errlog_uid *uids;   /* sorted by uid */
	size_t nuids, uids_cap;
};

void errlog_init(struct errlog *l, size_t cap);
/* Turns on the limits by uid for every uid but `spared` (before the first line). */
void errlog_limit(struct errlog *l, size_t per_uid, unsigned per_second, uid_t spared);
void errlog_free(struct errlog *l);
void errlog_add(struct errlog *l, const char *line, size_t len); /* line ends with '\n' */
/* A refusal by uid at now_us: logged (true) or counted as suppressed (false). Reports
 * what earlier seconds left out first. */
bool errlog_add_by(struct errlog *l, uid_t uid, int64_t now_us, const char *line, size_t len);
/* Logs the suppressed records of seconds that ended before now_us. */
void errlog_flush(struct errlog *l, int64_t now_us);
/* Copies up to size bytes from offset off into out; returns the count. */
size_t errlog_read(const struct errlog *l, size_t off, size_t size, struct buf *out);

#endif

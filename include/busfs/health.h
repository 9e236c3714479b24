/* health.h — agent health reports and the bus-wide rule (SPEC §4), without state.
 *
 * A report is one write(): a status word with an optional reason on the same line
 * ("degraded disk 91% full"), or a JSON object with "status", an optional "reason"
 * and any other fields, which are kept byte for byte and shown when health is read.
 * What an agent's status is at a given moment (stale, unknown) is computed from the
 * stored report and its time, never stored itself. */
#ifndef BUSFS_HEALTH_H
#define BUSFS_HEALTH_H

#include <stdint.h>

#include "busfs/buf.h"
#include "busfs/error.h"

/* Ordered from best to worst, as the worst-of rule compares them. UNKNOWN and
 * STALE are never reported: they are computed at read time. */
enum health_status {
	HEALTH_UNKNOWN = 0,
	HEALTH_HEALTHY = 1,
	HEALTH_DEGRADED = 2,
	HEALTH_UNHEALTHY = 3,
	HEALTH_STALE = 4,
};
#define HEALTH_NSTATUS 5

#define HEALTH_REASON_MAX 1024          /* bytes of a reason */
#define HEALTH_REPORT_MAX (64u << 10)   /* bytes of one report */
#define HEALTH_FIELDS_MAX 64            /* extra JSON fields */

struct health_report {
	enum health_status status;
	struct buf reason;   /* UTF-8 text, not JSON-escaped; may be empty */
	struct buf extra;    /* ,"key":value... (compact JSON members, leading comma) */
};

void health_report_init(struct health_report *r);
void health_report_free(struct health_report *r);

/* "healthy", "degraded", ... ; NULL for an out-of-range value. */
const char *health_status_name(enum health_status s);

/* Parses one report. Bad input -> -EINVAL with the reason in err; r is then
 * unspecified (but still owned by the caller, who frees it). */
int health_parse(const char *data, size_t len, struct health_report *r, struct bus_error *err);

/* The status shown at `now_us`: STALE when a report or heartbeat exists and is older
 * than ttl_us, UNKNOWN when nothing was ever reported, else the reported status. */
enum health_status health_effective(enum health_status reported, int64_t last_seen_us,
				    int64_t now_us, int64_t ttl_us);

/* The bus's status from counts per effective status: the worst of the agents',
 * stale counting as unhealthy and unknown not counting; healthy when none counts. */
enum health_status health_worst(const unsigned counts[HEALTH_NSTATUS]);

#endif

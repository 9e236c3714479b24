/* dedupe.c — idempotent sends (SPEC §10): the idempotency keys each sender used
 * within --dedupe-window, so a retried `send` record is accepted and not delivered
 * again.
 *
 * A key enters with the record that delivers its message (REC_DELIVER_KEYED), so a
 * kill -9 can never keep the message and lose its key, nor the reverse; snapshots
 * restate the keys still within the window (REC_SNAP_DEDUPE). Keys live in a map
 * ("UID/SENDER\x01KEY" -> when first seen) and in a queue in the order they came, which
 * is how they leave: a tick drops the keys older than the window from the front, so
 * nothing is scanned. Under the bus lock. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus_impl.h"

/* A key is the sender's: its name AND the uid that owns it, so an agent removed and
 * registered again by another uid does not inherit (or let others plant) its keys.
 * Map values are first-seen times + 1, so 0 still reads as absent. */
int dedupe_key(char *out, size_t n, uid_t owner, const char *from, const char *key,
	       size_t keylen)
{
	int f = snprintf(out, n, "%u/%s", (unsigned)owner, from);
	if (keylen == 0 || keylen > DEDUPE_KEY_MAX || memchr(key, '\0', keylen) || f < 0 ||
	    (size_t)f + 1 + keylen + 1 > n)
		return -EINVAL;
	out[f] = '\x01';
	memcpy(out + f + 1, key, keylen);
	out[f + 1 + keylen] = '\0';
	return 0;
}

static int64_t window_us(const struct bus *bus)
{
	return (int64_t)(bus->cfg.dedupe_window_s * 1e6);
}

bool dedupe_seen(const struct bus *bus, const char *k, int64_t now)
{
	uint64_t v = strmap_get(&bus->dedupe.map, k);
	return v && now - (int64_t)(v - 1) < window_us(bus);
}

int dedupe_add(struct bus *bus, const char *k, int64_t at)
{
	struct dedupe *d = &bus->dedupe;
	if (d->n == d->cap) {
		size_t cap = d->cap ? d->cap * 2 : 64;
		struct dedupe_entry *q = malloc(cap * sizeof *q);
		if (!q)
			return -ENOMEM;
		for (size_t i = 0; i < d->n; i++)
			q[i] = d->q[(d->head + i) % d->cap];
		free(d->q);
		d->q = q;
		d->cap = cap;
		d->head = 0;
	}
	char *copy = strdup(k);
	if (!copy || strmap_set(&d->map, k, (uint64_t)at + 1) < 0) {
		free(copy);
		return -ENOMEM;
	}
	struct dedupe_entry *e = &d->q[(d->head + d->n) % d->cap];
	e->key = copy; /* the queue owns it; dedupe_expire and dedupe_free let it go */
	e->at = at;
	d->n++;
	return 0;
}

/* Takes back the newest key dedupe_add entered (a record that could not apply). */
void dedupe_undo_last(struct bus *bus)
{
	struct dedupe *d = &bus->dedupe;
	if (!d->n)
		return;
	struct dedupe_entry *e = &d->q[(d->head + d->n - 1) % d->cap];
	strmap_del(&d->map, e->key);
	free(e->key);
	d->n--;
}

void dedupe_expire(struct bus *bus, int64_t now)
{
	struct dedupe *d = &bus->dedupe;
	while (d->n) {
		struct dedupe_entry *e = &d->q[d->head];
		if (now - e->at < window_us(bus))
			break;
		/* A key seen again after its window has a newer entry: that one stays. */
		if (strmap_get(&d->map, e->key) == (uint64_t)e->at + 1)
			strmap_del(&d->map, e->key);
		free(e->key);
		d->head = (d->head + 1) % d->cap;
		d->n--;
	}
}

void dedupe_free(struct dedupe *d)
{
	for (size_t i = 0; i < d->n; i++)
		free(d->q[(d->head + i) % d->cap].key);
	free(d->q);
	strmap_free(&d->map);
	memset(d, 0, sizeof *d);
}

/* REC_SNAP_DEDUPE: str "UID/SENDER\x01KEY", u64 at_us. */
int dedupe_apply(struct bus *bus, struct reader *r)
{
	char k[DEDUPE_KEY_BUF];
	rd_str(r, k, sizeof k);
	uint64_t at = rd_u64(r);
	if (r->bad || !strchr(k, '\x01') || at > (uint64_t)INT64_MAX / 2)
		return -EINVAL;
	return dedupe_add(bus, k, (int64_t)at);
}

int dedupe_save(struct bus *bus, struct buf *b)
{
	struct dedupe *d = &bus->dedupe;
	int64_t now = bus_clock_now_us();
	int rc = 0;
	for (size_t i = 0; i < d->n && rc == 0; i++) {
		const struct dedupe_entry *e = &d->q[(d->head + i) % d->cap];
		if (now - e->at >= window_us(bus) ||
		    strmap_get(&d->map, e->key) != (uint64_t)e->at + 1)
			continue;
		buf_put_u8(b, REC_SNAP_DEDUPE);
		buf_put_str(b, e->key);
		buf_put_u64(b, (uint64_t)e->at);
		rc = bus_snapshot_put(bus, b);
	}
	return rc;
}

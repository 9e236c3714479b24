/* monitor.c — the bus's monitoring files: metric writes and logs, summary.json and
 * the Prometheus exposition (SPEC §5). The storage and the sketches are metrics.c's. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "bus_impl.h"
#include "busfs/clock.h"

/* The points of one write, copied out of the parser's callback. */
struct batch {
	struct metric_point *v;
	size_t n, cap;
};

static int batch_add(void *ctx, const struct metric_point *p)
{
	struct batch *b = ctx;
	if (b->n == b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 16;
		struct metric_point *v = realloc(b->v, cap * sizeof *v);
		if (!v)
			return -ENOMEM;
		b->v = v;
		b->cap = cap;
	}
	struct metric_point *q = &b->v[b->n];
	*q = *p;
	buf_init(&q->tags);
	buf_append(&q->tags, p->tags.data, p->tags.len);
	b->n++;
	return buf_ok(&q->tags) ? 0 : -ENOMEM;
}

static void batch_free(struct batch *b)
{
	for (size_t i = 0; i < b->n; i++)
		buf_free(&b->v[i].tags);
	free(b->v);
}

int bus_metrics_write(struct bus *bus, uint64_t agent_id, uid_t uid, const char *data,
		      size_t len, struct bus_error *err)
{
	struct batch b = {0};
	int rc = metric_parse(data, len, batch_add, &b, err);
	if (rc == -ENOMEM)
		bus_fail(err, ENOMEM, "out of memory");
	if (rc >= 0) {
		bus_lock(bus);
		struct agent *a = bus_owned_agent(bus, agent_id, uid, "write the metrics of", err);
		rc = a ? metrics_add(&bus->metrics, a->name, b.v, b.n, bus_clock_now_us(), err)
		       : -err->code;
		bus_unlock_and_wake(bus);
	}
	batch_free(&b);
	return rc < 0 ? rc : 0;
}

/* The name of the view: NULL for the whole log. Under the lock. */
static bool view_name(struct bus *bus, uint64_t agent_id, const char **name)
{
	*name = NULL;
	if (!agent_id)
		return true;
	struct agent *a = bus_find_id(bus, agent_id);
	if (a)
		*name = a->name;
	return a != NULL;
}

ssize_t bus_metrics_read(struct bus *bus, uint64_t agent_id, uint64_t *off, char *buf, size_t n)
{
	const char *name;
	bus_lock(bus);
	ssize_t r = view_name(bus, agent_id, &name) ? metrics_read(&bus->metrics, name, off, buf, n)
						    : -ENOENT;
	pthread_mutex_unlock(&bus->lock);
	return r;
}

uint64_t bus_metrics_size(struct bus *bus, uint64_t agent_id)
{
	const char *name;
	bus_lock(bus);
	uint64_t size = view_name(bus, agent_id, &name) ? metrics_size(&bus->metrics, name) : 0;
	pthread_mutex_unlock(&bus->lock);
	return size;
}

void bus_summary_render(struct bus *bus, struct buf *out)
{
	bus_lock(bus);
	metrics_summary_render(&bus->metrics, bus_clock_now_us(), out);
	pthread_mutex_unlock(&bus->lock);
}

/* ---------- Prometheus text format 0.0.4 ---------- */

static void family(struct buf *b, const char *name, const char *type, const char *help)
{
	buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void bus_prom_render(struct bus *bus, struct buf *out)
{
	unsigned counts[HEALTH_NSTATUS] = {0};
	bus_lock(bus);
	int64_t now = bus_clock_now_us();

	family(out, "busfs_messages_delivered_total", "counter",
	       "Messages delivered to inboxes (acks and every broadcast copy included).");
	buf_printf(out, "busfs_messages_delivered_total %" PRIu64 "\n", bus->delivered_total);
	family(out, "busfs_messages_rejected_total", "counter",
	       "Operations busfs refused, by errno (see the errors file).");
	bool any = false;
	for (int code = 1; code < BUS_ERRNO_MAX; code++) {
		if (!bus->rejected_by[code])
			continue;
		buf_printf(out, "busfs_messages_rejected_total{reason=\"%s\"} %" PRIu64 "\n",
			   bus_errno_name(code), bus->rejected_by[code]);
		any = true;
	}
	if (bus->rejected_by[0] || !any)
		buf_printf(out, "busfs_messages_rejected_total{reason=\"other\"} %" PRIu64 "\n",
			   bus->rejected_by[0]);
	family(out, "busfs_messages_pending", "gauge", "Messages waiting in inboxes.");
	buf_printf(out, "busfs_messages_pending %" PRIu64 "\n", bus->pending);
	family(out, "busfs_inbox_depth", "gauge", "Messages waiting in each agent's inbox.");
	for (size_t i = 0; i < bus->nagents; i++)
		buf_printf(out, "busfs_inbox_depth{agent=\"%s\"} %zu\n", bus->by_name[i]->name,
			   bus->by_name[i]->inbox.live);
	family(out, "busfs_leases_active", "gauge", "Messages leased by a claim now (inflight/).");
	buf_printf(out, "busfs_leases_active %" PRIu64 "\n", bus->leased);
	family(out, "busfs_redeliveries_total", "counter",
	       "Leases that ended without an ack (expired or nak), the message pending again or dead.");
	buf_printf(out, "busfs_redeliveries_total %" PRIu64 "\n", bus->redeliveries_total);
	family(out, "busfs_dead_letters_total", "counter",
	       "Dead letters made, by reason; discarded: pushed out of a full dead/.");
	for (int r = 0; r < DEAD_NREASONS; r++)
		buf_printf(out, "busfs_dead_letters_total{reason=\"%s\"} %" PRIu64 "\n",
			   bus_dead_reason_name(r), bus->dead_total[r]);
	family(out, "busfs_duplicates_total", "counter",
	       "Send records accepted and not delivered again: their idempotency key was seen.");
	buf_printf(out, "busfs_duplicates_total %" PRIu64 "\n", bus->duplicates_total);
	family(out, "busfs_dead_letters", "gauge", "Dead letters held now (dead/).");
	buf_printf(out, "busfs_dead_letters %" PRIu64 "\n", bus->dead);
	family(out, "busfs_inbox_capacity", "gauge", "Messages an inbox holds (--inbox-capacity).");
	buf_printf(out, "busfs_inbox_capacity %u\n", bus->cfg.inbox_capacity);
	for (size_t i = 0; i < bus->nagents; i++) {
		const struct agent *a = bus->by_name[i];
		counts[bus_agent_health(bus, a, now)]++;
	}
	family(out, "busfs_agents", "gauge", "Registered agents by health status.");
	for (int s = HEALTH_HEALTHY; s <= HEALTH_NSTATUS; s++) {
		int k = s % HEALTH_NSTATUS;
		buf_printf(out, "busfs_agents{status=\"%s\"} %u\n", health_status_name(k), counts[k]);
	}
	family(out, "busfs_metric_points_total", "counter",
	       "Metric points accepted since the server started.");
	buf_printf(out, "busfs_metric_points_total %" PRIu64 "\n", bus->metrics.points_total);
	family(out, "busfs_store_bytes", "gauge", "Bytes of the store's journal and snapshot.");
	buf_printf(out, "busfs_store_bytes %" PRIu64 "\n", store_bytes(bus->store));
	family(out, "busfs_store_max_bytes", "gauge", "The store's limit (--store-max-bytes).");
	buf_printf(out, "busfs_store_max_bytes %" PRIu64 "\n", bus->cfg.store_max_bytes);
	family(out, "busfs_uptime_seconds", "gauge", "Seconds since the server started.");
	double up = bus_clock_monotonic() - bus->started;
	buf_printf(out, "busfs_uptime_seconds %.3f\n", up > 0 ? up : 0.0);
	metrics_prom_render(&bus->metrics, now, out);
	pthread_mutex_unlock(&bus->lock);
}

/* events.c — the bus-wide `events` log (SPEC §10): one JSON line for each thing that
 * happened to a message or an agent, numbered by `seq`, store-wide and gapless.
 *
 * Events are made by applying records, never elsewhere, so a restart's replay makes
 * the same events under the same numbers: the counter is in snapshots, and an event
 * the log already holds (seq at most the log's last) is not written again, while one
 * that a crash kept out of the log (its record reached the journal, its line not yet
 * the log) is written at the replay. Records a snapshot restates make no event.
 *
 * The lines a record makes go to the log in one append once it has applied. Lines
 * that find no room (a full store filesystem) are held, in order, and written before
 * any later line: at the next record or the next second's tick. Lines that cannot be
 * made at all (no memory) stop the log until the next start, whose replay of the
 * journal writes them; until then nothing may compact the journal away
 * (events_behind), and that holds for held lines too.
 *
 * The log is a seglog under STORE/events/. --events-retention N keeps at least the
 * newest N: whole segments leave, oldest first, and the rest keep their seq, so a
 * reader resumes by skipping what it has seen. Under the bus lock. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus_impl.h"
#include "busfs/clock.h"
#include "busfs/json.h"

/* Segments small enough that whole ones leaving keep close to N: a 32nd of N lines of
 * about 200 bytes, 4 KiB to 256 KiB. */
static uint64_t segment_bytes(uint64_t retention)
{
	uint64_t b = retention * 200 / 32;
	return b < 4096 ? 4096 : b > (256u << 10) ? (256u << 10) : b;
}

/* The seq of a line, 0 when it has none. */
static uint64_t line_seq(const char *line, size_t len)
{
	static const char key[] = "{\"seq\":";
	if (len < sizeof key || memcmp(line, key, sizeof key - 1) != 0)
		return 0;
	return strtoull(line + sizeof key - 1, NULL, 10);
}

struct scan {
	struct events *ev;
	size_t seg;                 /* the segment whose first line is looked for */
};

/* At open: the last seq the log holds, and the first seq of each segment. */
static int scan_line(void *ctx, uint64_t off, const char *line, size_t len)
{
	struct scan *s = ctx;
	struct events *ev = s->ev;
	uint64_t seq = line_seq(line, len);
	while (s->seg < ev->nsegs && off >= seglog_segment_start(ev->log, s->seg)) {
		ev->first_seq[s->seg] = seq;
		s->seg++;
	}
	if (seq > ev->logged)
		ev->logged = seq;
	return 0;
}

int events_open(struct bus *bus, struct bus_error *err)
{
	struct events *ev = &bus->events;
	char dir[4096];
	snprintf(dir, sizeof dir, "%s/events", bus->cfg.store_dir);
	struct seglog_config cfg = {
		.dir = dir,
		.prefix = "events",
		.rotate_bytes = segment_bytes(bus->cfg.events_retention),
	};
	int rc = seglog_open(&cfg, bus_clock_now_us(), &ev->log, err);
	if (rc < 0)
		return rc;
	ev->nsegs = seglog_segments(ev->log);
	ev->cap = ev->nsegs + 16;
	ev->first_seq = calloc(ev->cap, sizeof *ev->first_seq);
	if (!ev->first_seq)
		return bus_fail(err, ENOMEM, "out of memory");
	struct scan s = {ev, 0};
	seglog_scan(ev->log, scan_line, &s);
	return 0;
}

void events_close(struct bus *bus)
{
	seglog_close(bus->events.log);
	free(bus->events.first_seq);
	buf_free(&bus->events.lines);
	memset(&bus->events, 0, sizeof bus->events);
}

/* Whole segments leave while the newest --events-retention stay without them. */
static void trim(struct bus *bus)
{
	struct events *ev = &bus->events;
	while (ev->nsegs > 1 && ev->seq - ev->first_seq[1] + 1 >= bus->cfg.events_retention &&
	       seglog_drop_oldest(ev->log)) {
		memmove(ev->first_seq, ev->first_seq + 1, (ev->nsegs - 1) * sizeof *ev->first_seq);
		ev->nsegs--;
	}
}

/* The head of an event's line, `{"seq":N,"timestamp":"...","event":"KIND"` and its
 * agent; NULL when this event is not written (its seq is counted all the same). On
 * the send path once per delivery: plain appends, no printf. */
static struct buf *event_open(struct bus *bus, const char *kind, const char *agent)
{
	struct events *ev = &bus->events;
	if (bus->restating || (agent && agent[0] == '@'))
		return NULL; /* a gateway's queue (remote.c) is no agent's business */
	uint64_t seq = ++ev->seq;
	if (!ev->log || seq <= ev->logged || ev->stalled)
		return NULL;
	char ts[BUS_TIME_LEN + 1];
	struct buf *line = &ev->lines;
	bus_time_format(bus_clock_now_us(), ts);
	if (!line->len)
		ev->lines_first = seq;
	buf_puts(line, "{\"seq\":");
	buf_put_uint(line, seq);
	buf_puts(line, ",\"timestamp\":\"");
	buf_puts(line, ts);
	buf_puts(line, "\",\"event\":\"");
	buf_puts(line, kind);
	buf_putc(line, '"');
	if (agent) {
		buf_puts(line, ",\"agent\":\"");
		buf_puts(line, agent);
		buf_putc(line, '"');
	}
	return line;
}

static void event_close(struct bus *bus, struct buf *line)
{
	buf_puts(line, "}\n");
	bus->events.lines_last = bus->events.seq;
}

void event_emit(struct bus *bus, const char *kind, const char *agent, const char *fields)
{
	struct buf *line = event_open(bus, kind, agent);
	if (!line)
		return;
	if (fields)
		buf_puts(line, fields);
	event_close(bus, line);
}

void events_flush(struct bus *bus)
{
	struct events *ev = &bus->events;
	if (!buf_ok(&ev->lines)) {
		/* A line could not be made: the log stops here rather than skip a seq. */
		if (!ev->stalled)
			fprintf(stderr, "busfs: events: out of memory making a line; the log "
				"stops at seq %" PRIu64 " and the next start writes the rest\n",
				ev->logged);
		ev->stalled = true;
		buf_free(&ev->lines);
		buf_init(&ev->lines);
		return;
	}
	if (!ev->lines.len)
		return;
	/* One append for every event of a record (and any held before it). */
	int64_t now = bus_clock_now_us();
	int rc = seglog_append(ev->log, ev->lines.data, ev->lines.len, now, NULL);
	if (rc < 0) {
		if (!ev->held)
			fprintf(stderr, "busfs: events: %s; lines from seq %" PRIu64 " are held "
				"until there is room\n", strerror(-rc), ev->lines_first);
		ev->held = true;
		return;
	}
	if (ev->held)
		fprintf(stderr, "busfs: events: the held lines up to seq %" PRIu64 " are written\n",
			ev->lines_last);
	ev->held = false;
	ev->logged = ev->lines_last;
	size_t n = seglog_segments(ev->log);
	if (n > ev->nsegs) {
		if (n > ev->cap) {
			uint64_t *p = realloc(ev->first_seq, (n + 16) * sizeof *p);
			if (p) {
				ev->first_seq = p;
				ev->cap = n + 16;
			}
		}
		if (n <= ev->cap) {
			for (size_t i = ev->nsegs; i < n; i++)
				ev->first_seq[i] = ev->lines_first;
			ev->nsegs = n;
		}
	}
	trim(bus);
	want_wake(bus, BUS_EVENTS_WAKE_ID);
	buf_reset(&ev->lines);
	/* A large record's lines are not kept for the next one. */
	if (ev->lines.cap > (64u << 10)) {
		buf_free(&ev->lines);
		buf_init(&ev->lines);
	}
}

void events_discard(struct bus *bus, uint64_t seq, size_t lines_len)
{
	struct events *ev = &bus->events;
	ev->seq = seq;
	if (buf_ok(&ev->lines) && lines_len <= ev->lines.len) {
		ev->lines.len = lines_len; /* the lines held from earlier records stay */
		ev->lines_last = seq;
	}
}

bool events_behind(struct bus *bus)
{
	return bus->events.stalled || bus->events.lines.len;
}

/* `,"msg_id":...,"from":...,"to":...` of a message, then `,"bytes":N` when bytes is
 * not 0, then what follows (or NULL). */
void event_message(struct bus *bus, const char *kind, const char *agent,
		   const struct bus_message *m, uint64_t bytes, const char *more)
{
	struct buf *line = event_open(bus, kind, agent);
	if (!line)
		return;
	buf_puts(line, ",\"msg_id\":\"");
	buf_puts(line, m->msg_id);
	buf_puts(line, "\",\"from\":\"");
	buf_puts(line, m->from);
	buf_puts(line, "\",\"to\":\"");
	buf_puts(line, m->to);
	buf_putc(line, '"');
	if (bytes) {
		buf_puts(line, ",\"bytes\":");
		buf_put_uint(line, bytes);
	}
	if (more)
		buf_puts(line, more);
	event_close(bus, line);
}

ssize_t bus_events_read(struct bus *bus, uint64_t *off, char *buf, size_t n)
{
	bus_lock(bus);
	ssize_t r = bus->events.log ? seglog_read(bus->events.log, off, buf, n) : 0;
	pthread_mutex_unlock(&bus->lock);
	return r;
}

uint64_t bus_events_size(struct bus *bus)
{
	bus_lock(bus);
	uint64_t n = bus->events.log ? seglog_end(bus->events.log) : 0;
	pthread_mutex_unlock(&bus->lock);
	return n;
}

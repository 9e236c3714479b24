/* waiters.c — `next` and `claim` readers that wait: parked requests, poll handles,
 * the notifier.
 *
 * A `cat agents/A/next` (or `claim`) on an empty inbox costs no thread: its request
 * is parked here and answered later, when a delivery, a drain, a removal, a lease
 * that ended or a nak's delay wakes agent A. A woken claim leases its message then,
 * so a reader that is answered holds the lease it reads.
 * Exactly one side answers a parked request: whoever takes it off the list under
 * park_lock (the waker, the interrupt callback or shutdown) replies and frees it.
 * Poll handles are handed to the notifier thread, the only thread that calls
 * fuse_lowlevel_notify_poll (it must never run inside a request handler).
 *
 * Lock order: bus lock, then park_lock. Neither is held across a reply. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "fs.h"

struct parked {
	fuse_req_t req;
	struct handle *h;
	uint64_t agent_id;
	size_t size;
	struct parked *next, *prev;
};

void waiters_init(struct fs *fs)
{
	pthread_mutex_init(&fs->park_lock, NULL);
	pthread_cond_init(&fs->notify_cond, NULL);
}

static void park_unlink(struct fs *fs, struct parked *p)
{
	if (p->prev)
		p->prev->next = p->next;
	else
		fs->parked = p->next;
	if (p->next)
		p->next->prev = p->prev;
	p->next = p->prev = NULL;
	fs->nparked--;
}

static void park_link(struct fs *fs, struct parked *p)
{
	p->prev = NULL;
	p->next = fs->parked;
	if (fs->parked)
		fs->parked->prev = p;
	fs->parked = p;
	fs->nparked++;
}

bool next_answered(const struct handle *h) { return h->msg || h->claimed || h->next_done; }

void next_reply(fuse_req_t req, struct handle *h, size_t size, off_t off)
{
	if (h->node == N_CLAIM) {
		if (!h->claimed || off < 0 || (size_t)off >= h->doc.len)
			fuse_reply_buf(req, NULL, 0);
		else
			fuse_reply_buf(req, h->doc.data + off,
				       h->doc.len - (size_t)off < size ? h->doc.len - (size_t)off : size);
		return;
	}
	if (!h->msg || off < 0 || (size_t)off >= h->msg->len) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	size_t n = h->msg->len - (size_t)off;
	fuse_reply_buf(req, h->msg->envelope + off, n < size ? n : size);
}

/* Outcome of looking at an agent's inbox for a `next` or `claim` reader. */
enum next_state { NEXT_MESSAGE, NEXT_EOF, NEXT_WAIT, NEXT_ERROR };

/* A claim leases its message now; a refusal other than "nothing to claim" (the store
 * is full, say) is the read's error, logged. */
static enum next_state claim_look(struct fs *fs, struct handle *h, struct bus_error *err)
{
	bool draining = false;
	buf_reset(&h->doc);
	int rc = bus_claim(fs->bus, h->agent_id, h->uid, &h->doc, &draining, err);
	if (rc == 0) {
		h->claimed = true;
		return NEXT_MESSAGE;
	}
	if (rc == -ENOENT || (rc == -EAGAIN && (draining || fs->stopping))) {
		h->next_done = true;
		return NEXT_EOF;
	}
	return rc == -EAGAIN ? NEXT_WAIT : NEXT_ERROR;
}

static enum next_state next_look(struct fs *fs, struct handle *h, struct bus_error *err)
{
	if (h->node == N_CLAIM)
		return claim_look(fs, h, err);
	bool draining = false;
	struct bus_message *m = NULL;
	int rc = bus_next_peek(fs->bus, h->agent_id, &m, &draining);
	if (rc == 0) {
		h->msg = m;
		return NEXT_MESSAGE;
	}
	if (rc == -ENOENT || draining || fs->stopping) {
		h->next_done = true;
		return NEXT_EOF;
	}
	return NEXT_WAIT;
}

static void on_interrupt(fuse_req_t req, void *data)
{
	struct fs *fs = fuse_req_userdata(req);
	struct parked *p = data;
	bool mine = false;
	pthread_mutex_lock(&fs->park_lock);
	for (struct parked *q = fs->parked; q; q = q->next) {
		if (q == p) {
			park_unlink(fs, p);
			mine = true;
			break;
		}
	}
	pthread_mutex_unlock(&fs->park_lock);
	if (mine) {
		fuse_reply_err(req, EINTR);
		free(p);
	}
}

/* Answers a read whose look did not say wait: the message, end-of-file or the error. */
static void answer(struct fs *fs, fuse_req_t req, struct handle *h, size_t size,
		   enum next_state s, const struct bus_error *err)
{
	if (s == NEXT_ERROR) {
		struct bus_agent_info a;
		bool known = bus_agent_by_id(fs->bus, h->agent_id, &a) == 0;
		bus_log_error(fs->bus, known ? a.name : NULL, "read", h->path, h->uid, err);
		log_msg(LOG_INFO, "read %s by uid %u: %s: %s", h->path, (unsigned)h->uid,
			bus_errno_name(err->code), err->reason);
		fuse_reply_err(req, err->code);
		return;
	}
	next_reply(req, h, size, 0);
}

void waiters_park(struct fs *fs, fuse_req_t req, struct handle *h, size_t size, bool nonblock)
{
	struct bus_error err = {0};
	enum next_state s = next_look(fs, h, &err);
	if (s != NEXT_WAIT) {
		answer(fs, req, h, size, s, &err);
		return;
	}
	if (nonblock) {
		fuse_reply_err(req, EAGAIN);
		return;
	}
	struct parked *p = calloc(1, sizeof *p);
	if (!p) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	p->req = req;
	p->h = h;
	p->agent_id = h->agent_id;
	p->size = size;
	pthread_mutex_lock(&fs->park_lock);
	park_link(fs, p);
	pthread_mutex_unlock(&fs->park_lock);
	/* Registered last: an interrupt that already arrived answers it right here. */
	fuse_req_interrupt_func(req, on_interrupt, p);
}

/* Takes every parked request of the agent and answers what can be answered; the
 * others (a resume woke them, not a message) go back on the list. */
void waiters_wake(void *ctx, uint64_t agent_id)
{
	struct fs *fs = ctx;
	struct parked *mine = NULL;

	pthread_mutex_lock(&fs->park_lock);
	for (struct parked *p = fs->parked, *next; p; p = next) {
		next = p->next;
		if (p->agent_id != agent_id)
			continue;
		park_unlink(fs, p);
		p->next = mine;
		mine = p;
	}
	for (struct handle *h = fs->polls, *next; h; h = next) {
		next = h->poll_next;
		if (h->agent_id != agent_id)
			continue;
		if (fs->notify_n == fs->notify_cap) {
			size_t cap = fs->notify_cap ? fs->notify_cap * 2 : 16;
			struct fuse_pollhandle **q = realloc(fs->notify_q, cap * sizeof *q);
			if (!q)
				continue;
			fs->notify_q = q;
			fs->notify_cap = cap;
		}
		fs->notify_q[fs->notify_n++] = h->ph;
		h->ph = NULL;
		if (h->poll_prev)
			h->poll_prev->poll_next = h->poll_next;
		else
			fs->polls = h->poll_next;
		if (h->poll_next)
			h->poll_next->poll_prev = h->poll_prev;
		h->poll_next = h->poll_prev = NULL;
	}
	if (fs->notify_n)
		pthread_cond_signal(&fs->notify_cond);
	pthread_mutex_unlock(&fs->park_lock);

	for (struct parked *p = mine, *next; p; p = next) {
		next = p->next;
		struct bus_error err = {0};
		enum next_state s = next_look(fs, p->h, &err);
		if (s == NEXT_WAIT) {
			pthread_mutex_lock(&fs->park_lock);
			park_link(fs, p);
			pthread_mutex_unlock(&fs->park_lock);
			continue;
		}
		answer(fs, p->req, p->h, p->size, s, &err);
		free(p);
	}
}

void waiters_poll(struct fs *fs, fuse_req_t req, struct handle *h, struct fuse_pollhandle *ph)
{
	bool ready = next_answered(h);
	if (h->node == N_EVENTS) {
		/* Readable when the log holds more than this reader has read (its next
		 * sequential offset); the events' wake-up comes under BUS_EVENTS_WAKE_ID. */
		ready = bus_events_size(fs->bus) > h->log_expect;
	} else if (!ready && h->node == N_CLAIM) {
		bool draining = false;
		ready = bus_claim_ready(fs->bus, h->agent_id, &draining) || draining;
	} else if (!ready) {
		bool draining = false;
		struct bus_message *m = NULL;
		int rc = bus_next_peek(fs->bus, h->agent_id, &m, &draining);
		ready = rc != -EAGAIN || draining;
		message_unref(m);
	}
	if (ph) {
		pthread_mutex_lock(&fs->park_lock);
		if (ready) {
			fuse_pollhandle_destroy(ph);
		} else {
			if (h->ph)
				fuse_pollhandle_destroy(h->ph);
			else {
				h->poll_prev = NULL;
				h->poll_next = fs->polls;
				if (fs->polls)
					fs->polls->poll_prev = h;
				fs->polls = h;
			}
			h->ph = ph;
		}
		pthread_mutex_unlock(&fs->park_lock);
	}
	fuse_reply_poll(req, ready ? POLLIN | POLLRDNORM : 0);
}

void waiters_forget_handle(struct fs *fs, struct handle *h)
{
	if (h->node != N_NEXT && h->node != N_CLAIM && h->node != N_EVENTS)
		return;
	pthread_mutex_lock(&fs->park_lock);
	if (h->ph) {
		fuse_pollhandle_destroy(h->ph);
		h->ph = NULL;
		if (h->poll_prev)
			h->poll_prev->poll_next = h->poll_next;
		else
			fs->polls = h->poll_next;
		if (h->poll_next)
			h->poll_next->poll_prev = h->poll_prev;
	}
	pthread_mutex_unlock(&fs->park_lock);
}

static void *notifier_main(void *arg)
{
	struct fs *fs = arg;
	pthread_mutex_lock(&fs->park_lock);
	for (;;) {
		while (!fs->notify_n && !fs->notify_stop)
			pthread_cond_wait(&fs->notify_cond, &fs->park_lock);
		if (fs->notify_stop && !fs->notify_n)
			break;
		struct fuse_pollhandle *ph = fs->notify_q[--fs->notify_n];
		pthread_mutex_unlock(&fs->park_lock);
		fuse_lowlevel_notify_poll(ph);
		fuse_pollhandle_destroy(ph);
		pthread_mutex_lock(&fs->park_lock);
	}
	pthread_mutex_unlock(&fs->park_lock);
	return NULL;
}

int fs_thread_start(pthread_t *t, void *(*fn)(void *), void *arg)
{
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	int rc = pthread_create(t, NULL, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return -rc;
}

int waiters_start(struct fs *fs)
{
	int rc = fs_thread_start(&fs->notifier, notifier_main, fs);
	fs->notifier_started = rc == 0;
	return rc;
}

/* After the session loop ends: every parked reader gets end-of-file, the notifier
 * sends what it holds and stops, and no poll handle is left behind. */
void waiters_shutdown(struct fs *fs)
{
	fs->stopping = true;
	pthread_mutex_lock(&fs->park_lock);
	struct parked *all = fs->parked;
	fs->parked = NULL;
	fs->nparked = 0;
	pthread_mutex_unlock(&fs->park_lock);
	for (struct parked *p = all, *next; p; p = next) {
		next = p->next;
		fuse_reply_buf(p->req, NULL, 0);
		free(p);
	}
	pthread_mutex_lock(&fs->park_lock);
	fs->notify_stop = true;
	pthread_cond_signal(&fs->notify_cond);
	pthread_mutex_unlock(&fs->park_lock);
	if (fs->notifier_started)
		pthread_join(fs->notifier, NULL);
	for (size_t i = 0; i < fs->notify_n; i++)
		fuse_pollhandle_destroy(fs->notify_q[i]);
	free(fs->notify_q);
	fs->notify_q = NULL;
	fs->notify_n = 0;
	pthread_mutex_lock(&fs->park_lock);
	for (struct handle *h = fs->polls; h; h = h->poll_next) {
		fuse_pollhandle_destroy(h->ph);
		h->ph = NULL;
	}
	fs->polls = NULL;
	pthread_mutex_unlock(&fs->park_lock);
}

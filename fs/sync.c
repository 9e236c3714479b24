/* sync.c — --sync (SPEC §13): a reply that follows a commit leaves only once the
 * journal bytes behind it are on stable storage, and commits share their fdatasync.
 *
 * busfs serves every request from one dispatch thread, so commits never wait side by
 * side: the group is made at the other end. Every reply goes through a writev hook
 * (fuse_session_custom_io). While the journal holds bytes no sync has covered yet, the
 * hook keeps a copy of the reply with the count of bytes written so far and returns
 * at once; the dispatch thread serves the next request. The syncer thread takes the
 * journal, calls fdatasync outside the bus lock, and sends every held reply the sync
 * covered, in the order they were made. What piled up during one fdatasync goes out
 * after the next: the busier the bus, the more replies one sync answers. When the last
 * sync answered several, the next waits (at most as long as that sync took) until as
 * many replies are held: the writers it just answered are writing again, and one
 * fdatasync then covers all of them instead of the first one alone.
 *
 * Only the replies of requests during which something was committed wait: a CREATE,
 * a read or a RELEASE that commits nothing goes straight out, as do notifications
 * (unique 0) and everything once the journal is synced. (A reader may so see a
 * message whose sender is still waiting for the disk; a power cut then takes both
 * the message and anything the reader committed after it, in journal order.) A sync
 * that fails turns the replies it held into EIO: their commits are in memory, not
 * known to be on disk.
 *
 * Ownership: held replies belong to the queue under `lock` until the syncer writes
 * them; syncer_stop sends what is left and joins the thread. */
#include <errno.h>
#include <linux/fuse.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "busfs/clock.h"
#include "fs.h"

struct held_reply {
	struct held_reply *next;
	uint64_t written;     /* journal bytes written when it was made */
	size_t len;
	char data[];          /* struct fuse_out_header, then the reply */
};

/* Journal bytes written when this thread took its current request (the dispatch
 * thread; 0 on the others, whose replies are all held while anything is unsynced). */
static _Thread_local uint64_t request_mark;

static ssize_t sync_read(int fd, void *buf, size_t len, void *userdata)
{
	struct fs *fs = userdata;
	ssize_t n = read(fd, buf, len);
	request_mark = bus_journal_written(fs->bus);
	return n;
}

static ssize_t sync_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	struct fs *fs = userdata;
	struct syncer *sy = &fs->sync;
	const struct fuse_out_header *out = iov[0].iov_base;
	uint64_t written = bus_journal_written(fs->bus);
	if (out->unique == 0 || written <= request_mark || written <= atomic_load(&sy->synced))
		return writev(fd, iov, count);
	size_t len = 0;
	for (int i = 0; i < count; i++)
		len += iov[i].iov_len;
	struct held_reply *h = malloc(sizeof *h + len);
	if (!h) {
		/* No room to hold it: sync here rather than answer before the disk has it. */
		uint64_t synced;
		if (bus_journal_sync(fs->bus, &synced) < 0) {
			errno = EIO;
			return -1;
		}
		return writev(fd, iov, count);
	}
	h->next = NULL;
	h->written = written;
	h->len = len;
	size_t at = 0;
	for (int i = 0; i < count; i++) {
		memcpy(h->data + at, iov[i].iov_base, iov[i].iov_len);
		at += iov[i].iov_len;
	}
	pthread_mutex_lock(&sy->lock);
	if (sy->tail)
		sy->tail->next = h;
	else
		sy->head = h;
	sy->tail = h;
	sy->held++;
	pthread_cond_signal(&sy->cond);
	pthread_mutex_unlock(&sy->lock);
	return (ssize_t)len;
}

/* Sends a held reply; with err, as that error instead of its answer. */
static void send_held(struct fs *fs, struct held_reply *h, int err)
{
	if (err) {
		struct fuse_out_header *out = (struct fuse_out_header *)h->data;
		out->error = -err;
		out->len = sizeof *out;
		h->len = sizeof *out;
	}
	/* ENOENT: the request was interrupted meanwhile; nothing waits for the answer. */
	if (write(fuse_session_fd(fs->se), h->data, h->len) < 0 && errno != ENOENT)
		log_msg(LOG_WARNING, "--sync: a reply held for the sync was not delivered: %s",
			strerror(errno));
	free(h);
}

/* Under sy->lock, with a reply held: waits for the group the last sync answered to
 * gather again, at most as long as that sync took (and never above a millisecond). */
static void gather(struct syncer *sy)
{
	if (sy->last_group < 2)
		return;
	int64_t wait_us = sy->last_sync_us < 1000 ? sy->last_sync_us : 1000;
	struct timespec until;
	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_nsec += (long)(wait_us * 1000);
	until.tv_sec += until.tv_nsec / 1000000000;
	until.tv_nsec %= 1000000000;
	while (sy->held < sy->last_group && !sy->stop &&
	       pthread_cond_timedwait(&sy->cond, &sy->lock, &until) == 0)
		;
}

static void *syncer_main(void *arg)
{
	struct fs *fs = arg;
	struct syncer *sy = &fs->sync;
	pthread_mutex_lock(&sy->lock);
	for (;;) {
		while (!sy->head && !sy->stop)
			pthread_cond_wait(&sy->cond, &sy->lock);
		if (!sy->head)
			break;
		gather(sy);
		pthread_mutex_unlock(&sy->lock);
		uint64_t synced = 0;
		double t0 = bus_clock_monotonic();
		int rc = bus_journal_sync(fs->bus, &synced);
		sy->last_sync_us = (int64_t)((bus_clock_monotonic() - t0) * 1e6);
		sy->syncs++;
		if (rc < 0)
			log_msg(LOG_ERR, "--sync: fdatasync of the journal failed: %s; the replies it "
				"held answer EIO", strerror(-rc));
		else if (synced > atomic_load(&sy->synced))
			atomic_store(&sy->synced, synced);
		pthread_mutex_lock(&sy->lock);
		/* Written counts only grow along the queue: take the head while covered. */
		struct held_reply *done = NULL, **tail = &done;
		size_t group = 0;
		while (sy->head && (rc < 0 || sy->head->written <= synced)) {
			struct held_reply *h = sy->head;
			sy->head = h->next;
			h->next = NULL;
			*tail = h;
			tail = &h->next;
			group++;
		}
		sy->held -= group;
		sy->last_group = group;
		if (!sy->head)
			sy->tail = NULL;
		pthread_mutex_unlock(&sy->lock);
		for (struct held_reply *h = done, *next; h; h = next) {
			next = h->next;
			send_held(fs, h, rc < 0 ? EIO : 0);
			sy->replies++;
		}
		pthread_mutex_lock(&sy->lock);
	}
	pthread_mutex_unlock(&sy->lock);
	return NULL;
}

int syncer_install(struct fs *fs)
{
	struct syncer *sy = &fs->sync;
	pthread_mutex_init(&sy->lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&sy->cond, &ca);
	pthread_condattr_destroy(&ca);
	atomic_init(&sy->synced, 0);
	sy->installed = true;
	if (!sy->on)
		return 0;
	const struct fuse_custom_io io = {.read = sync_read, .writev = sync_writev};
	return fuse_session_custom_io(fs->se, &io, fuse_session_fd(fs->se));
}

int syncer_start(struct fs *fs)
{
	struct syncer *sy = &fs->sync;
	if (!sy->on)
		return 0;
	/* What an earlier run without --sync left in the journal is on disk from now on. */
	uint64_t synced;
	if (bus_journal_sync(fs->bus, &synced) < 0)
		log_msg(LOG_WARNING, "--sync: the journal could not be synced at start");
	int rc = fs_thread_start(&sy->thread, syncer_main, fs);
	sy->started = rc == 0;
	return rc;
}

void syncer_stop(struct fs *fs)
{
	struct syncer *sy = &fs->sync;
	if (!sy->installed)
		return;
	pthread_mutex_lock(&sy->lock);
	sy->stop = true;
	pthread_cond_signal(&sy->cond);
	pthread_mutex_unlock(&sy->lock);
	if (sy->started) {
		pthread_join(sy->thread, NULL);
		log_msg(LOG_INFO, "--sync: %llu fdatasyncs answered %llu held replies",
			(unsigned long long)sy->syncs, (unsigned long long)sy->replies);
	}
	sy->started = false;
	/* Not started (a failed start): nothing was held that a thread could send. */
	for (struct held_reply *h = sy->head, *next; h; h = next) {
		next = h->next;
		free(h);
	}
	sy->head = sy->tail = NULL;
	sy->held = 0;
}

/* ticker.c — the thread of periodic work: every second it ends the leases whose
 * deadline passed (and wakes claimers of naks whose delay ended, and makes dead
 * letters of messages past their ttl); every --alert-interval it evaluates alert
 * rules and lets expired metric points go. It calls into the bus only; the wake-ups
 * the bus hands back answer parked readers, never a notification from a handler. It
 * blocks every signal so SIGTERM lands on the dispatch thread. ticker_stop() ends
 * it; the struct fs owns it. */
#include <errno.h>
#include <time.h>

#include "busfs/clock.h"
#include "fs.h"

static double interval;

#define LEASE_PERIOD 1.0 /* SPEC §10: deadlines are checked at least every second */

static void *ticker_main(void *arg)
{
	struct fs *fs = arg;
	double period = interval < LEASE_PERIOD ? interval : LEASE_PERIOD;
	double next_alerts = bus_clock_monotonic() + interval;
	pthread_mutex_lock(&fs->ticker_lock);
	while (!fs->ticker_stop) {
		struct timespec at;
		clock_gettime(CLOCK_MONOTONIC, &at);
		long long ns = at.tv_nsec + (long long)(period * 1e9);
		at.tv_sec += (time_t)(ns / 1000000000);
		at.tv_nsec = (long)(ns % 1000000000);
		int rc = 0;
		while (!fs->ticker_stop && rc != ETIMEDOUT)
			rc = pthread_cond_timedwait(&fs->ticker_cond, &fs->ticker_lock, &at);
		if (fs->ticker_stop)
			break;
		pthread_mutex_unlock(&fs->ticker_lock);
		bus_tick_second(fs->bus);
		if (bus_clock_monotonic() >= next_alerts) {
			bus_tick(fs->bus);
			next_alerts += interval;
			if (next_alerts < bus_clock_monotonic())
				next_alerts = bus_clock_monotonic() + interval;
		}
		pthread_mutex_lock(&fs->ticker_lock);
	}
	pthread_mutex_unlock(&fs->ticker_lock);
	return NULL;
}

int ticker_start(struct fs *fs, double interval_s)
{
	pthread_condattr_t ca;
	interval = interval_s;
	pthread_mutex_init(&fs->ticker_lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&fs->ticker_cond, &ca);
	pthread_condattr_destroy(&ca);
	int rc = fs_thread_start(&fs->ticker, ticker_main, fs);
	fs->ticker_started = rc == 0;
	return rc;
}

void ticker_stop(struct fs *fs)
{
	if (!fs->ticker_started)
		return;
	pthread_mutex_lock(&fs->ticker_lock);
	fs->ticker_stop = true;
	pthread_cond_signal(&fs->ticker_cond);
	pthread_mutex_unlock(&fs->ticker_lock);
	pthread_join(fs->ticker, NULL);
	fs->ticker_started = false;
	pthread_cond_destroy(&fs->ticker_cond);
	pthread_mutex_destroy(&fs->ticker_lock);
}

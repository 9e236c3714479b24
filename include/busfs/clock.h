/* clock.h — wall-clock time for timestamps, replaceable in tests.
 *
 * Every timestamp busfs writes is RFC 3339 UTC with microseconds. */
#ifndef BUSFS_CLOCK_H
#define BUSFS_CLOCK_H

#include <stdbool.h>
#include <stdint.h>

#define BUS_TIME_LEN 27 /* "2026-11-23T05:05:12.123456Z" */

int64_t bus_clock_now_us(void);
/* Tests install a fake clock; NULL restores the real one. */
void bus_clock_set(int64_t (*now_us)(void));
/* Monotonic seconds, for uptime and intervals. */
double bus_clock_monotonic(void);
/* out must hold BUS_TIME_LEN + 1 bytes. */
void bus_time_format(int64_t us, char *out);
/* Reads what bus_time_format writes (s[0..BUS_TIME_LEN)); false when malformed. */
bool bus_time_parse(const char *s, int64_t *us);

#endif

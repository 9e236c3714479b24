/* clock.c — real and injectable clocks, RFC 3339 formatting. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "busfs/clock.h"

static int64_t (*fake_now)(void);

void bus_clock_set(int64_t (*now_us)(void)) { fake_now = now_us; }

int64_t bus_clock_now_us(void)
{
	if (fake_now)
		return fake_now();
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

double bus_clock_monotonic(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void bus_time_format(int64_t us, char *out)
{
	/* Timestamps come in bursts within one second (a batch of sends, a document):
	 * each thread keeps the text of the last second it formatted. */
	static _Thread_local int64_t cached_secs = INT64_MIN;
	static _Thread_local char cached[20];   /* "2026-11-23T05:05:12" */
	int64_t secs = us / 1000000;
	long frac = (long)(us % 1000000);
	if (frac < 0) {
		frac += 1000000;
		secs--;
	}
	if (secs != cached_secs) {
		time_t t = (time_t)secs;
		struct tm tm;
		gmtime_r(&t, &tm);
		char tmp[96];
		snprintf(tmp, sizeof tmp, "%04d-%02d-%02dT%02d:%02d:%02d",
			 (tm.tm_year + 1900) % 10000, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
			 tm.tm_min, tm.tm_sec);
		memcpy(cached, tmp, 19);
		cached_secs = secs;
	}
	memcpy(out, cached, 19);
	out[19] = '.';
	for (int i = 25; i >= 20; i--) {
		out[i] = (char)('0' + frac % 10);
		frac /= 10;
	}
	out[26] = 'Z';
	out[BUS_TIME_LEN] = '\0';
}

static int digits(const char *s, int n)
{
	int v = 0;
	for (int i = 0; i < n; i++)
		v = v * 10 + s[i] - '0';
	return v;
}

static int days_in_month(int year, int month)
{
	static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
	return month == 2 && leap ? 29 : days[month - 1];
}

/* Strict RFC 3339 (SPEC §11): every field within its range, a day that the month
 * has, no leap second; so whatever parses formats back to the same text. */
bool bus_time_parse(const char *s, int64_t *us)
{
	static const char shape[] = "0000-00-00T00:00:00.000000Z";
	for (int i = 0; i < BUS_TIME_LEN; i++)
		if (shape[i] == '0' ? s[i] < '0' || s[i] > '9' : s[i] != shape[i])
			return false;
	int year = digits(s + 0, 4), month = digits(s + 5, 2), day = digits(s + 8, 2);
	int hour = digits(s + 11, 2), minute = digits(s + 14, 2), second = digits(s + 17, 2);
	if (month < 1 || month > 12 || day < 1 || day > days_in_month(year, month) || hour > 23 ||
	    minute > 59 || second > 59)
		return false;
	struct tm tm = {
		.tm_year = year - 1900, .tm_mon = month - 1, .tm_mday = day,
		.tm_hour = hour, .tm_min = minute, .tm_sec = second,
	};
	*us = (int64_t)timegm(&tm) * 1000000 + digits(s + 20, 6);
	return true;
}

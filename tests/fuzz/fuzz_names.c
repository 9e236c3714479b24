/*
 * fuzz_names.c — the small parsers of names and stamps: inbox file names and msg_ids
 * (core/message.c message_parse_file_name, message_id_number, message_id_format),
 * RFC 3339 timestamps (core/clock.c bus_time_parse, bus_time_format) and agent and
 * metric names (bus_name_valid, metric_name_valid).
 *
 * Input: bytes 0-7 a time, 8-15 a number, 16-19 a store id (little endian), then a
 * string (cut at its first NUL) handed to every parser.
 *
 * Invariants:
 *  - a file name that parses is rebuilt byte for byte by message_file_name, and its
 *    msg_id carries the same number;
 *  - message_id_format of any time in years 0000-9999 and any number below 10^19
 *    gives a msg_id that message_id_number reads back to that number;
 *  - bus_time_format of any time in years 0000-9999 reads back (bus_time_parse) to
 *    the same microsecond, also when formatting alternates between seconds (the
 *    formatter caches the last second); a stamp that parses formats back to the
 *    very same text (parsing is strict: month 01-12, a day the month has, 00-59
 *    seconds);
 *  - bus_name_valid and metric_name_valid agree with reference checks of their
 *    documented patterns.
 */
#include <string.h>

#include "busfs/bus.h"
#include "busfs/clock.h"
#include "busfs/message.h"
#include "busfs/metric.h"
#include "common.h"

/* 0000-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z in microseconds. */
#define T_MIN (-INT64_C(62167219200) * 1000000)
#define T_MAX (INT64_C(253402300800) * 1000000 - 1)

static uint64_t le64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static bool alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
static bool digit(char c) { return c >= '0' && c <= '9'; }

/* [A-Za-z][A-Za-z0-9._-]{0,63}, not "all". */
static bool ref_agent_name(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 64 || strcmp(s, "all") == 0 || !alpha(s[0]))
		return false;
	for (size_t i = 1; i < n; i++)
		if (!alpha(s[i]) && !digit(s[i]) && !strchr("._-", s[i]))
			return false;
	return true;
}

/* [a-zA-Z_][a-zA-Z0-9_.:-]{0,127} */
static bool ref_metric_name(const char *s, size_t n)
{
	if (n == 0 || n > 128 || !(alpha(s[0]) || s[0] == '_'))
		return false;
	for (size_t i = 1; i < n; i++)
		if (!alpha(s[i]) && !digit(s[i]) && !(s[i] && strchr("_.:-", s[i])))
			return false;
	return true;
}

static void check_time(int64_t us)
{
	char text[BUS_TIME_LEN + 1];
	bus_time_format(us, text);
	FUZZ_CHECK(strlen(text) == BUS_TIME_LEN, "bus_time_format(%lld) = %s", (long long)us,
		   text);
	int64_t back = 0;
	FUZZ_CHECK(bus_time_parse(text, &back) && back == us,
		   "bus_time_format(%lld) = %s reads back as %lld", (long long)us, text,
		   (long long)back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 20)
		return 0;
	uint64_t t = le64(data), number = le64(data + 8);
	uint32_t store_id = (uint32_t)data[16] | (uint32_t)data[17] << 8 | (uint32_t)data[18] << 16 |
		   (uint32_t)data[19] << 24;
	int64_t us = T_MIN + (int64_t)(t % (uint64_t)(T_MAX - T_MIN + 1));

	/* Stamps, alternating between two seconds so the cache must follow. */
	check_time(us);
	int64_t other = us > T_MIN + 5000000 ? us - 5000000 : us + 5000000;
	check_time(other);
	check_time(us);

	/* msg_ids. (parse_digits refuses 20-digit numbers from 18446744073709551610 up,
	 * a conservative overflow guard no real counter reaches: below 10^19 only.) */
	number %= UINT64_C(10000000000000000000);
	if (number) {
		char id[BUS_MSG_ID_LEN + 1];
		message_id_format(id, store_id, us, number);
		FUZZ_CHECK(strlen(id) == BUS_MSG_ID_LEN && message_id_number(id) == number,
			   "msg_id %s of number %llu reads back as %llu", id,
			   (unsigned long long)number, (unsigned long long)message_id_number(id));
	}

	/* The string. */
	size_t n = size - 20;
	char *s = malloc(n + 1);
	memcpy(s, data + 20, n);
	s[n] = '\0';

	char id[BUS_MSG_ID_LEN + 1] = "";
	uint64_t num = message_parse_file_name(s, id);
	if (num) {
		FUZZ_CHECK(message_id_number(id) == num, "file name %s: msg_id %s", s, id);
		struct bus_message *m = calloc(1, sizeof *m + 1);
		m->number = num;
		m->msg_id = id;
		char name[BUS_FILE_NAME_LEN + 1];
		message_file_name(m, name);
		FUZZ_CHECK(strcmp(name, s) == 0, "file name %s is rebuilt as %s", s, name);
		free(m);
	}
	uint64_t idnum = message_id_number(s);
	FUZZ_CHECK(!idnum || strlen(s) == BUS_MSG_ID_LEN, "msg_id %s of the wrong length", s);

	int64_t when;
	if (bus_time_parse(s, &when)) {
		char text[BUS_TIME_LEN + 1];
		bus_time_format(when, text);
		/* Strict parsing (SPEC §11): a stamp that parses is in canonical form. */
		FUZZ_CHECK(memcmp(text, s, BUS_TIME_LEN) == 0,
			   "stamp %.27s -> %lld -> %s does not read back", s, (long long)when, text);
	}

	FUZZ_CHECK(bus_name_valid(s) == ref_agent_name(s), "bus_name_valid(%s) = %d", s,
		   bus_name_valid(s));
	size_t len = strlen(s);
	FUZZ_CHECK(metric_name_valid(s, len) == ref_metric_name(s, len),
		   "metric_name_valid(%s) = %d", s, metric_name_valid(s, len));
	free(s);
	return 0;
}

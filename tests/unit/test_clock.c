/* test_clock.c — RFC 3339 stamps: formatting, and the strict parser (SPEC §11). */
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include "busfs/clock.h"
#include "unit.h"

static bool parses(const char *s)
{
    int64_t us = 0;
    return bus_time_parse(s, &us);
}

Test(clock, format_of_the_spec_example)
{
    char text[BUS_TIME_LEN + 1];
    bus_time_format(UNIT_T0_US, text);
    cr_assert_str_eq(text, "2026-11-23T05:05:12.123456Z");
    int64_t back = 0;
    cr_assert(bus_time_parse(text, &back));
    cr_assert_eq(back, UNIT_T0_US);
}

Test(clock, parse_accepts_the_edges_of_every_field)
{
    static const char *const good[] = {
        "0000-01-01T00:00:00.000000Z", "9999-12-31T23:59:59.999999Z",
        "2024-02-29T12:00:00.000000Z", /* a leap year */
        "2000-02-29T12:00:00.000000Z", /* divisible by 400 */
        "2026-01-31T00:00:00.000000Z", "2026-04-30T00:00:00.000000Z",
        "2026-12-31T00:00:00.000000Z", "1970-01-01T00:00:00.000000Z",
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        int64_t us = 0;
        cr_assert(bus_time_parse(good[i], &us), "%s is a real time", good[i]);
        char text[BUS_TIME_LEN + 1];
        bus_time_format(us, text);
        cr_assert_str_eq(text, good[i], "%s reads back as itself", good[i]);
    }
}

Test(clock, parse_refuses_what_is_not_a_real_time)
{
    static const char *const bad[] = {
        "2026-00-10T00:00:00.000000Z", /* month 00 (found by fuzzing) */
        "2026-13-10T00:00:00.000000Z", "2026-01-00T00:00:00.000000Z",
        "2026-01-32T00:00:00.000000Z", "2026-02-29T00:00:00.000000Z", /* not a leap year */
        "1900-02-29T00:00:00.000000Z", /* divisible by 100, not by 400 */
        "2026-04-31T00:00:00.000000Z", "2026-06-31T00:00:00.000000Z",
        "2026-09-31T00:00:00.000000Z", "2026-11-31T00:00:00.000000Z",
        "2026-01-10T24:00:00.000000Z", "2026-01-10T00:60:00.000000Z",
        "2026-01-10T00:00:60.000000Z", /* a leap second: not 00-59 */
        "0000-00-01T00:00:00.000000Z", /* would wrap to the year -1 */
        "2026-01-10T00:00:00.000000",  "2026-01-10 00:00:00.000000Z",
        "2026-01-10T00:00:00,000000Z", "2026-1-10T00:00:00.0000000Z",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        cr_assert_not(parses(bad[i]), "%s is refused", bad[i]);
}

/*
 * test_strmap.c — core/strmap.c: the string -> u64 map behind per-pair sequences.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "busfs/strmap.h"
#include "unit.h"

#define STRMAP_TEST(name) Test(strmap, name, .timeout = UNIT_TIMEOUT)

STRMAP_TEST(an_empty_map_answers_zero)
{
    struct strmap m;
    strmap_init(&m);
    cr_assert_eq(strmap_get(&m, "alice\x01" "bob"), 0);
    cr_assert_eq(strmap_get(&m, ""), 0);
    size_t seen = 0;
    strmap_foreach(&m, s) seen++;
    cr_assert_eq(seen, 0);
    strmap_free(&m);
    strmap_free(&m); /* freeing twice is harmless: free re-initialises */
}

STRMAP_TEST(set_then_get_and_overwrite_keeps_one_entry)
{
    struct strmap m;
    strmap_init(&m);
    cr_assert_eq(strmap_set(&m, "alice\x01" "bob", 1), 0);
    cr_assert_eq(strmap_set(&m, "bob\x01" "alice", 7), 0);
    cr_assert_eq(strmap_get(&m, "alice\x01" "bob"), 1);
    cr_assert_eq(strmap_set(&m, "alice\x01" "bob", UINT64_MAX), 0);
    cr_assert_eq(strmap_get(&m, "alice\x01" "bob"), UINT64_MAX);
    cr_assert_eq(strmap_get(&m, "bob\x01" "alice"), 7);
    cr_assert_eq(m.count, 2);
    cr_assert_eq(strmap_get(&m, "alice"), 0, "a prefix is another key");
    cr_assert_eq(strmap_get(&m, "alice\x01" "bobby"), 0);
    strmap_free(&m);
}

STRMAP_TEST(the_map_copies_its_keys)
{
    struct strmap m;
    strmap_init(&m);
    char key[16] = "carol";
    cr_assert_eq(strmap_set(&m, key, 3), 0);
    strcpy(key, "dave");
    cr_assert_eq(strmap_get(&m, "carol"), 3);
    cr_assert_eq(strmap_get(&m, "dave"), 0);
    strmap_free(&m);
}

STRMAP_TEST(growth_over_ten_thousand_keys_keeps_every_value)
{
    struct strmap m;
    strmap_init(&m);
    enum { N = 10000 };
    char key[64];
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof key, "agent-%d\x01peer-%d", i, i * 7919 % N);
        cr_assert_eq(strmap_set(&m, key, (uint64_t)i + 1), 0);
    }
    cr_assert_eq(m.count, N);
    cr_assert_eq(m.cap & (m.cap - 1), 0, "capacity %zu is a power of two", m.cap);
    cr_assert_lt(m.count, m.cap, "there is always a free slot");
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof key, "agent-%d\x01peer-%d", i, i * 7919 % N);
        cr_assert_eq(strmap_get(&m, key), (uint64_t)i + 1, "key %s", key);
    }
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof key, "absent-%d", i);
        cr_assert_eq(strmap_get(&m, key), 0);
    }
    /* Overwrites after growth do not add entries. */
    for (int i = 0; i < N; i += 3) {
        snprintf(key, sizeof key, "agent-%d\x01peer-%d", i, i * 7919 % N);
        cr_assert_eq(strmap_set(&m, key, 5), 0);
    }
    cr_assert_eq(m.count, N);
    size_t seen = 0;
    uint64_t sum = 0;
    strmap_foreach(&m, s) {
        seen++;
        sum += s->value;
    }
    cr_assert_eq(seen, N, "foreach visits each key once");
    uint64_t want = 0;
    for (int i = 0; i < N; i++)
        want += i % 3 == 0 ? 5 : (uint64_t)i + 1;
    cr_assert_eq(sum, want);
    strmap_free(&m);
    cr_assert_eq(m.count, 0);
    cr_assert_null(m.slots);
}

STRMAP_TEST(keys_that_collide_in_the_low_bits_are_all_found)
{
    /* With 64 slots, many of 200 keys share a home slot: probing must find each. */
    struct strmap m;
    strmap_init(&m);
    char key[32];
    for (int i = 0; i < 200; i++) {
        snprintf(key, sizeof key, "k%d", i);
        cr_assert_eq(strmap_set(&m, key, (uint64_t)i), 0);
        for (int k = 0; k <= i; k++) {
            snprintf(key, sizeof key, "k%d", k);
            cr_assert_eq(strmap_get(&m, key), (uint64_t)k, "after %d inserts, k%d", i + 1, k);
        }
    }
    strmap_free(&m);
}

STRMAP_TEST(del_removes_one_key_and_keeps_every_other)
{
    struct strmap m;
    char key[32];
    strmap_init(&m);
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof key, "k%d", i);
        cr_assert_eq(strmap_set(&m, key, (uint64_t)i + 1), 0);
    }
    strmap_del(&m, "absent"); /* nothing */
    cr_assert_eq(m.count, 5000);
    for (int i = 0; i < 5000; i += 3) {
        snprintf(key, sizeof key, "k%d", i);
        strmap_del(&m, key);
    }
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof key, "k%d", i);
        cr_assert_eq(strmap_get(&m, key), i % 3 ? (uint64_t)i + 1 : 0, "key %s", key);
    }
    cr_assert_eq(m.count, 5000 - 1667);
    size_t seen = 0;
    strmap_foreach(&m, s) seen++;
    cr_assert_eq(seen, m.count);
    /* deleted keys can come back */
    cr_assert_eq(strmap_set(&m, "k0", 42), 0);
    cr_assert_eq(strmap_get(&m, "k0"), 42);
    strmap_free(&m);
}

/*
 * test_store.c — core/store.c: the journal, its torn tails, the snapshot and its
 * generations, the lock and the refusal of symlinks.
 *
 * The one thing to know: a record is wholly in the store or not at all, and loading
 * cuts the journal at the first bad frame so that later appends are never hidden
 * behind a torn tail. Each test damages the files the way a crash would.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "busfs/buf.h"
#include "busfs/store.h"
#include "unit.h"

#define STORE_TEST(name) \
    Test(store, name, .init = unit_setup, .fini = unit_teardown, .timeout = UNIT_TIMEOUT)

#define HEADER_SIZE 16
#define FRAME_SIZE 8

/* ---------- helpers ---------- */

struct records {
    size_t n;
    struct buf rec[256];
};

static int collect(void *ctx, const uint8_t *rec, size_t len, bool from_snapshot)
{
    (void)from_snapshot;
    struct records *r = ctx;
    cr_assert_lt(r->n, 256);
    buf_init(&r->rec[r->n]);
    buf_append(&r->rec[r->n], rec, len);
    r->n++;
    return 0;
}

static void records_free(struct records *r)
{
    for (size_t i = 0; i < r->n; i++)
        buf_free(&r->rec[i]);
    r->n = 0;
}

static char store_dir[PATH_MAX];

static const char *store_file(const char *name)
{
    static char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", store_dir, name);
    return path;
}

/* Opens (read-write) and loads the test's store; the records land in *out. */
static struct store *open_load(struct records *out, struct store_load_report *rep)
{
    struct store *st = NULL;
    struct bus_error err = {0};
    int rc = store_open(store_dir, false, &st, &err);
    cr_assert_eq(rc, 0, "store_open: %d %s", rc, err.reason);
    out->n = 0;
    rc = store_load(st, collect, out, rep, &err);
    cr_assert_eq(rc, 0, "store_load: %d %s", rc, err.reason);
    return st;
}

/* A record of type 3 whose body names i; the same i always gives the same bytes. */
static void make_record(struct buf *b, int i)
{
    buf_reset(b);
    buf_put_u8(b, 3);
    buf_printf(b, "record-%d:", i);
    for (int k = 0; k < i % 7; k++)
        buf_printf(b, "%c", 'a' + k);
}

static void append_record(struct store *st, int i)
{
    struct buf b;
    buf_init(&b);
    make_record(&b, i);
    cr_assert_eq(store_append(st, b.data, b.len), 0, "append %d", i);
    buf_free(&b);
}

static size_t record_size(int i)
{
    struct buf b;
    buf_init(&b);
    make_record(&b, i);
    size_t n = b.len;
    buf_free(&b);
    return n;
}

/* The records must be exactly those named by ids[0..n). */
static void assert_records(const struct records *r, const int *ids, size_t n)
{
    cr_assert_eq(r->n, n, "%zu records loaded, want %zu", r->n, n);
    struct buf b;
    buf_init(&b);
    for (size_t i = 0; i < n; i++) {
        make_record(&b, ids[i]);
        cr_assert_eq(r->rec[i].len, b.len, "record %zu has %zu bytes, want record-%d", i,
                     r->rec[i].len, ids[i]);
        cr_assert_eq(memcmp(r->rec[i].data, b.data, b.len), 0, "record %zu is not record-%d",
                     i, ids[i]);
    }
    buf_free(&b);
}

static void truncate_file(const char *path, long long size)
{
    cr_assert_eq(truncate(path, (off_t)size), 0, "truncate %s: %s", path, strerror(errno));
}

static void flip_byte(const char *path, long long at)
{
    int fd = open(path, O_RDWR);
    cr_assert_geq(fd, 0);
    unsigned char c;
    cr_assert_eq(pread(fd, &c, 1, at), 1);
    c ^= 0x40;
    cr_assert_eq(pwrite(fd, &c, 1, at), 1);
    close(fd);
}

static void init_store_dir(void)
{
    unit_path(store_dir, "store");
}

/* A store holding records 1..n in its journal, closed. */
static void store_with_records(int n)
{
    struct records r = {0};
    struct store *st = open_load(&r, NULL);
    cr_assert_eq(r.n, 0);
    for (int i = 1; i <= n; i++)
        append_record(st, i);
    store_close(st);
}

/* ---------- journal ---------- */

STORE_TEST(crc32_matches_the_standard_check_value)
{
    cr_assert_eq(crc32_compute("123456789", 9), 0xcbf43926u);
    cr_assert_eq(crc32_compute("", 0), 0);
    const char *fox = "The quick brown fox jumps over the lazy dog";
    cr_assert_eq(crc32_compute(fox, strlen(fox)), 0x414fa339u);
}

/* The eight-bytes-a-step CRC agrees with the plain bitwise definition at every
 * length and alignment. */
STORE_TEST(crc32_agrees_with_the_bitwise_definition)
{
    static unsigned char data[4096 + 8];
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof data; i++) {
        x = x * 1103515245u + 12345u;
        data[i] = (unsigned char)(x >> 16);
    }
    for (size_t start = 0; start < 8; start++) {
        for (size_t n = 0; n < 300; n += 7) {
            uint32_t c = 0xffffffffu;
            for (size_t i = 0; i < n; i++) {
                c ^= data[start + i];
                for (int k = 0; k < 8; k++)
                    c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
            }
            cr_assert_eq(crc32_compute(data + start, n), c ^ 0xffffffffu, "start %zu, %zu bytes",
                         start, n);
        }
    }
}

STORE_TEST(a_new_store_has_a_format_file_and_keeps_its_id)
{
    init_store_dir();
    struct records r = {0};
    struct store *st = open_load(&r, NULL);
    uint32_t id = store_id(st);
    store_close(st);

    struct stat sb;
    cr_assert_eq(stat(store_dir, &sb), 0);
    cr_assert_eq(sb.st_mode & 0777, 0700, "the store directory is 0700");
    struct buf text;
    buf_init(&text);
    cr_assert_eq(unit_read_file(store_file("format"), &text), 0);
    char want[64];
    snprintf(want, sizeof want, "busfs-store 1\nid %08x\n", id);
    cr_assert_str_eq(text.data, want);
    buf_free(&text);
    cr_assert_eq(stat(store_file("journal"), &sb), 0);
    cr_assert_eq(sb.st_mode & 0777, 0600, "store files are 0600");

    st = open_load(&r, NULL);
    cr_assert_eq(store_id(st), id, "the store id survives a reopen");
    store_close(st);
}

STORE_TEST(append_then_reload_gives_the_same_records_in_order)
{
    init_store_dir();
    store_with_records(50);
    struct records r = {0};
    struct store_load_report rep;
    struct store *st = open_load(&r, &rep);
    int ids[50];
    for (int i = 0; i < 50; i++)
        ids[i] = i + 1;
    assert_records(&r, ids, 50);
    cr_assert_eq(rep.journal_records, 50);
    cr_assert_eq(rep.snapshot_records, 0);
    cr_assert_eq(rep.torn_bytes, 0);
    cr_assert_not(rep.journal_ignored);
    records_free(&r);
    store_close(st);
}

STORE_TEST(records_with_any_bytes_and_large_records_survive_a_reload)
{
    init_store_dir();
    struct records r = {0};
    struct store *st = open_load(&r, NULL);
    static char big[300000];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (char)(i * 131 + 7);
    const char bin[] = {1, 0, 0, 0, 0, 0, 0, 0, (char)0xff, '\n'};
    cr_assert_eq(store_append(st, bin, sizeof bin), 0);
    cr_assert_eq(store_append(st, big, sizeof big), 0);
    cr_assert_eq(store_append(st, "\x05", 1), 0);
    store_close(st);
    st = open_load(&r, NULL);
    cr_assert_eq(r.n, 3);
    cr_assert_eq(r.rec[0].len, sizeof bin);
    cr_assert_eq(memcmp(r.rec[0].data, bin, sizeof bin), 0);
    cr_assert_eq(r.rec[1].len, sizeof big);
    cr_assert_eq(memcmp(r.rec[1].data, big, sizeof big), 0);
    cr_assert_eq(r.rec[2].len, 1);
    records_free(&r);
    store_close(st);
}

STORE_TEST(an_empty_record_is_refused)
{
    init_store_dir();
    struct records r = {0};
    struct store *st = open_load(&r, NULL);
    cr_assert_lt(store_append(st, "", 0), 0);
    store_close(st);
    st = open_load(&r, NULL);
    cr_assert_eq(r.n, 0);
    store_close(st);
}

STORE_TEST(store_bytes_counts_the_journal_header_and_frames)
{
    init_store_dir();
    struct records r = {0};
    struct store *st = open_load(&r, NULL);
    cr_assert_eq(store_journal_bytes(st), HEADER_SIZE);
    uint64_t want = HEADER_SIZE;
    for (int i = 1; i <= 10; i++) {
        append_record(st, i);
        want += FRAME_SIZE + record_size(i);
    }
    cr_assert_eq(store_journal_bytes(st), want);
    cr_assert_eq(store_bytes(st), want);
    cr_assert_eq((long long)want, unit_file_size(store_file("journal")));
    cr_assert_gt(store_fs_free(st), 0);
    store_close(st);
}

STORE_TEST(a_journal_cut_mid_record_loses_only_that_record)
{
    /* Cut points inside the last frame's header and inside its payload. */
    size_t last = FRAME_SIZE + record_size(3);
    size_t cuts[] = {1, 3, FRAME_SIZE - 1, FRAME_SIZE, FRAME_SIZE + 1, last - 1};
    for (size_t c = 0; c < sizeof cuts / sizeof *cuts; c++) {
        char sub[32];
        snprintf(sub, sizeof sub, "store-%zu", c);
        unit_path(store_dir, sub);
        store_with_records(3);
        long long full = unit_file_size(store_file("journal"));
        long long cut_to = full - (long long)last + (long long)cuts[c];
        truncate_file(store_file("journal"), cut_to);

        struct records r = {0};
        struct store_load_report rep;
        struct store *st = open_load(&r, &rep);
        assert_records(&r, (int[]){1, 2}, 2);
        cr_assert_eq(rep.torn_bytes, cuts[c], "cut %zu: torn_bytes %llu", cuts[c],
                     (unsigned long long)rep.torn_bytes);
        cr_assert_eq(unit_file_size(store_file("journal")), full - (long long)last,
                     "the torn tail is cut off the file");
        records_free(&r);
        append_record(st, 4);
        store_close(st);

        st = open_load(&r, &rep);
        assert_records(&r, (int[]){1, 2, 4}, 3);
        cr_assert_eq(rep.torn_bytes, 0);
        records_free(&r);
        store_close(st);
    }
}

STORE_TEST(garbage_after_the_last_record_is_cut_and_later_appends_are_read)
{
    init_store_dir();
    store_with_records(3);
    unsigned char junk[100];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (unsigned char)(i * 37 + 11);
    cr_assert_eq(unit_append_file(store_file("journal"), junk, sizeof junk), 0);

    struct records r = {0};
    struct store_load_report rep;
    struct store *st = open_load(&r, &rep);
    assert_records(&r, (int[]){1, 2, 3}, 3);
    cr_assert_eq(rep.torn_bytes, sizeof junk);
    records_free(&r);
    append_record(st, 4);
    append_record(st, 5);
    store_close(st);

    st = open_load(&r, &rep);
    assert_records(&r, (int[]){1, 2, 3, 4, 5}, 5);
    cr_assert_eq(rep.torn_bytes, 0);
    records_free(&r);
    store_close(st);
}

STORE_TEST(a_half_written_frame_header_claiming_a_huge_length_is_cut)
{
    init_store_dir();
    store_with_records(2);
    const unsigned char frame[FRAME_SIZE] = {0xff, 0xff, 0xff, 0x7f, 1, 2, 3, 4};
    cr_assert_eq(unit_append_file(store_file("journal"), frame, sizeof frame), 0);
    struct records r = {0};
    struct store_load_report rep;
    struct store *st = open_load(&r, &rep);
    assert_records(&r, (int[]){1, 2}, 2);
    cr_assert_eq(rep.torn_bytes, FRAME_SIZE);
    records_free(&r);
    append_record(st, 3);
    store_close(st);
    st = open_load(&r, NULL);
    assert_records(&r, (int[]){1, 2, 3}, 3);
    records_free(&r);
    store_close(st);
}

STORE_TEST(a_zero_filled_tail_is_cut_and_later_appends_are_read)
{
    /* A crash of a disk-backed store can leave the file longer than its data, filled
     * with zeros. Eight zero bytes look like a frame of length 0 with CRC 0 — the
     * snapshot's end marker, which the journal never contains. */
    init_store_dir();
    store_with_records(3);
    unsigned char zeros[64] = {0};
    cr_assert_eq(unit_append_file(store_file("journal"), zeros, sizeof zeros), 0);

    struct records r = {0};
    struct store_load_report rep;
    struct store *st = open_load(&r, &rep);
    assert_records(&r, (int[]){1, 2, 3}, 3);
    records_free(&r);
    append_record(st, 4);
    store_close(st);

    st = open_load(&r, &rep);
    assert_records(&r, (int[]){1, 2, 3, 4}, 4);
    records_free(&r);
    store_close(st);
}

STORE_TEST(a_flipped_byte_in_the_last_record_drops_only_that_record)
{
    init_store_dir();
    store_with_records(4);
    long long full = unit_file_size(store_file("journal"));
    flip_byte(store_file("journal"), full - 2);

    struct records r = {0};
    struct store_load_report rep;
    struct store *st = open_load(&r, &rep);
    assert_records(&r, (int[]){1, 2, 3}, 3);
    cr_assert_eq(rep.torn_bytes, FRAME_SIZE + record_size(4));
    records_free(&r);
    append_record(st, 5);
    store_close(st);

    st = open_load(&r, NULL);
    assert_records(&r, (int[]){1, 2, 3, 5}, 4);
    records_free(&r);
    store_close(st);
}

STORE_TEST(a_flipped_checksum_or_length_in_the_last_frame_drops_only_that_record)
{
    for (int which = 0; which < 2; which++) {
        char sub[32];
        snprintf(sub, sizeof sub, "store-%d", which);
        unit_path(store_dir, sub);
        store_with_records(3);
        long long full = unit_file_size(store_file("journal"));
        long long frame_at = full - (long long)(FRAME_SIZE + record_size(3));
        flip_byte(store_file("journal"), frame_at + (which ? 4 : 0));
        struct records r = {0};
        struct store *st = open_load(&r, NULL);
        assert_records(&r, (int[]){1, 2}, 2);
        records_free(&r);
        store_close(st);
    }
}

/* A crash tears only the last record; a bad record with good ones after it is damage,
 * and cutting there would drop them: the store is refused, nothing is cut. */
STORE_TEST(a_bad_record_before_good_ones_is_damage_not_a_torn_tail)
{
    init_store_dir();
    store_with_records(3);
    long long full = unit_file_size(store_file("journal"));
    flip_byte(store_file("journal"), HEADER_SIZE + FRAME_SIZE + 2);  /* record 1's payload */
    struct store *st = NULL;
    struct bus_error err = {0};
    cr_assert_eq(store_open(store_dir, false, &st, &err), 0);
    struct records r = {0};
    cr_assert_eq(store_load(st, collect, &r, NULL, &err), -EBADMSG);
    cr_assert(strstr(err.reason, "damaged"), "%s", err.reason);
    records_free(&r);
    store_close(st);
    cr_assert_eq(unit_file_size(store_file("journal")), full, "nothing was cut");
}

STORE_TEST(a_journal_without_a_valid_header_is_an_error_not_an_empty_store)
{
    init_store_dir();
    store_with_records(2);
    flip_byte(store_file("journal"), 0);
    struct store *st = NULL;
    struct bus_error err = {0};
    cr_assert_eq(store_open(store_dir, false, &st, &err), 0);
    struct records r = {0};
    cr_assert_lt(store_load(st, collect, &r, NULL, &err), 0);
    cr_assert_neq(err.reason[0], '\0');
    records_free(&r);
    store_close(st);
}


/* ---------- snapshot ---------- */

static void snapshot_records(struct store *st, const int *ids, size_t n)
{
    struct buf b;
    buf_init(&b);
    cr_assert_eq(store_snapshot_begin(st), 0);
    for (size_t i = 0; i < n; i++) {
        make_record(&b, ids[i]);
        cr_assert_eq(store_snapshot_add(st, b.data, b.len), 0);
    }
    buf_free(&b);
}

STORE_TEST(a_committed_snapshot_is_read_then_the_new_empty_journal)
{
    init_store_dir();
    store_with_records(3);
    struct records r = {0};
    struct store *st = open_load(&r, NULL);
    records_free(&r);
    snapshot_records(st, (int[]){10, 11}, 2);
    cr_assert_eq(store_snapshot_commit(st), 0);
    cr_assert_eq(store_journal_bytes(st), HEADER_SIZE, "the journal restarts empty");
    cr_assert_eq((long long)store_snapshot_bytes(st), unit_file_size(store_file("snapshot")));
    cr_assert_eq(unit_file_size(store_file("journal")), HEADER_SIZE);
    cr_assert_eq(unit_file_size(store_file("snapshot.tmp")), -1, "no temp file is left");
    store_close(st);

    struct store_load_report rep;
    st = open_load(&r, &rep);
    assert_records(&r, (int[]){10, 11}, 2);
    cr_assert_eq(rep.snapshot_records, 2);
    cr_assert_eq(rep.journal_records, 0);
    cr_assert_not(rep.journal_ignored);
    records_free(&r);
    append_record(st, 12);
    store_close(st);

    st = open_load(&r, &rep);
    assert_records(&r, (int[]){10, 11, 12}, 3);
    cr_assert_eq(rep.snapshot_records, 2);
    cr_assert_eq(rep.journal_records, 1);
    records_free(&r);
    store_close(st);
}

STORE_TEST(a_large_snapshot_is_written_in_pieces_and_read_whole)
{
    init_store_dir();
    struct records r = {0};
    struct store *st = open_load(&r, NULL);
    static char big[700000];
    memset(big, 'x', sizeof big);
    big[0] = 12;
    cr_assert_eq(store_snapshot_begin(st), 0);
    for (int i = 0; i < 4; i++) {
        big[1] = (char)('0' + i);
        cr_assert_eq(store_snapshot_add(st, big, sizeof big), 0);
    }
    cr_assert_eq(store_snapshot_commit(st), 0);
    store_close(st);
    st = open_load(&r, NULL);
    cr_assert_eq(r.n, 4);
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(r.rec[i].len, sizeof big);
        cr_assert_eq(r.rec[i].data[1], '0' + i);
    }
    records_free(&r);
    store_close(st);
}

STORE_TEST(an_aborted_snapshot_changes_nothing)
{
    init_store_dir();
    store_with_records(3);
    struct records r = {0};
    struct store *st = open_load(&r, NULL);
    records_free(&r);
    snapshot_records(st, (int[]){10}, 1);
    store_snapshot_abort(st);
    cr_assert_eq(unit_file_size(store_file("snapshot.tmp")), -1);
    cr_assert_eq(unit_file_size(store_file("snapshot")), -1);
    append_record(st, 4);
    store_close(st);
    st = open_load(&r, NULL);
    assert_records(&r, (int[]){1, 2, 3, 4}, 4);
    records_free(&r);
    store_close(st);
}

STORE_TEST(a_journal_the_snapshot_covers_is_ignored)
{
    /* A crash between the snapshot's rename and the journal's restart leaves the old
     * journal next to a snapshot that already holds its records. */
    init_store_dir();
    store_with_records(3);
    struct records r = {0};
    struct store *st = open_load(&r, NULL);
    records_free(&r);
    struct buf old;
    buf_init(&old);
    cr_assert_eq(unit_read_file(store_file("journal"), &old), 0);
    snapshot_records(st, (int[]){1, 2, 3}, 3);
    cr_assert_eq(store_snapshot_commit(st), 0);
    store_close(st);
    cr_assert_eq(unit_write_file(store_file("journal"), old.data, old.len), 0);
    buf_free(&old);

    struct store_load_report rep;
    st = open_load(&r, &rep);
    assert_records(&r, (int[]){1, 2, 3}, 3);
    cr_assert(rep.journal_ignored);
    cr_assert_eq(rep.snapshot_records, 3);
    cr_assert_eq(rep.journal_records, 0);
    records_free(&r);
    append_record(st, 4);
    store_close(st);

    st = open_load(&r, &rep);
    assert_records(&r, (int[]){1, 2, 3, 4}, 4);
    cr_assert_not(rep.journal_ignored);
    records_free(&r);
    store_close(st);
}

STORE_TEST(a_damaged_snapshot_is_an_error_not_a_silent_loss)
{
    init_store_dir();
    struct records r = {0};
    struct store *st = open_load(&r, NULL);
    snapshot_records(st, (int[]){1, 2, 3}, 3);
    cr_assert_eq(store_snapshot_commit(st), 0);
    store_close(st);
    long long size = unit_file_size(store_file("snapshot"));
    flip_byte(store_file("snapshot"), size / 2);

    struct bus_error err = {0};
    cr_assert_eq(store_open(store_dir, false, &st, &err), 0);
    int rc = store_load(st, collect, &r, NULL, &err);
    cr_assert_eq(rc, -EBADMSG, "load of a damaged snapshot: %d", rc);
    cr_assert_neq(err.reason[0], '\0');
    records_free(&r);
    store_close(st);

    /* A snapshot without its end record (cut short) is damaged too. */
    unit_path(store_dir, "store2");
    st = open_load(&r, NULL);
    snapshot_records(st, (int[]){1, 2}, 2);
    cr_assert_eq(store_snapshot_commit(st), 0);
    store_close(st);
    truncate_file(store_file("snapshot"), unit_file_size(store_file("snapshot")) - FRAME_SIZE);
    cr_assert_eq(store_open(store_dir, false, &st, &err), 0);
    cr_assert_eq(store_load(st, collect, &r, NULL, &err), -EBADMSG);
    records_free(&r);
    store_close(st);
}

STORE_TEST(appends_after_a_failed_journal_restart_are_not_lost)
{
    /* The snapshot is in place but the next journal cannot be created (here: its temp
     * name is taken by a directory). Whatever store_append then reports as written must
     * be there after a restart. */
    init_store_dir();
    store_with_records(2);
    struct records r = {0};
    struct store *st = open_load(&r, NULL);
    records_free(&r);
    cr_assert_eq(mkdir(store_file("journal.tmp"), 0700), 0);
    snapshot_records(st, (int[]){1, 2}, 2);
    int commit = store_snapshot_commit(st);
    cr_assert_lt(commit, 0, "the journal could not restart, yet the commit reported success");
    struct buf b;
    buf_init(&b);
    make_record(&b, 3);
    int rc = store_append(st, b.data, b.len);
    buf_free(&b);
    store_close(st); /* the process dies here: no compaction at exit */
    cr_assert_eq(rmdir(store_file("journal.tmp")), 0);

    st = open_load(&r, NULL);
    if (rc == 0)
        assert_records(&r, (int[]){1, 2, 3}, 3);
    else
        assert_records(&r, (int[]){1, 2}, 2);
    records_free(&r);
    store_close(st);
}

/* ---------- lock and symlinks ---------- */

STORE_TEST(a_second_open_fails_with_ebusy_naming_the_pid)
{
    init_store_dir();
    struct records r = {0};
    struct store *st = open_load(&r, NULL);
    store_write_pid(st);
    struct store *second = NULL;
    struct bus_error err = {0};
    int rc = store_open(store_dir, false, &second, &err);
    cr_assert_eq(rc, -EBUSY);
    cr_assert_null(second);
    cr_assert_eq(err.code, EBUSY);
    char pid[32];
    snprintf(pid, sizeof pid, "%ld", (long)getpid());
    cr_assert_not_null(strstr(err.reason, pid), "reason '%s' lacks pid %s", err.reason, pid);
    store_close(st);

    /* Once the first closes, the store opens again. */
    st = open_load(&r, NULL);
    store_close(st);
}

STORE_TEST(a_second_open_fails_with_ebusy_before_the_pid_is_written)
{
    init_store_dir();
    struct records r = {0};
    struct store *st = open_load(&r, NULL);
    struct store *second = NULL;
    struct bus_error err = {0};
    cr_assert_eq(store_open(store_dir, false, &second, &err), -EBUSY);
    cr_assert_neq(err.reason[0], '\0');
    store_close(st);
}

STORE_TEST(a_read_only_open_needs_no_lock_and_changes_nothing)
{
    init_store_dir();
    store_with_records(2);
    unsigned char junk[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    cr_assert_eq(unit_append_file(store_file("journal"), junk, sizeof junk), 0);

    struct records r = {0};
    struct store *held = open_load(&r, NULL); /* a running server; it cuts the tail */
    records_free(&r);
    long long size = unit_file_size(store_file("journal"));
    cr_assert_eq(unit_append_file(store_file("journal"), junk, sizeof junk), 0);

    struct store *ro = NULL;
    struct bus_error err = {0};
    cr_assert_eq(store_open(store_dir, true, &ro, &err), 0, "%s", err.reason);
    struct store_load_report rep;
    cr_assert_eq(store_load(ro, collect, &r, &rep, &err), 0, "%s", err.reason);
    assert_records(&r, (int[]){1, 2}, 2);
    cr_assert_eq(rep.torn_bytes, sizeof junk);
    cr_assert_eq(unit_file_size(store_file("journal")), size + (long long)sizeof junk,
                 "a read-only load cuts nothing");
    records_free(&r);
    store_close(ro);
    store_close(held);
}

STORE_TEST(a_read_only_open_of_a_missing_store_creates_nothing)
{
    init_store_dir();
    struct store *ro = NULL;
    struct bus_error err = {0};
    cr_assert_lt(store_open(store_dir, true, &ro, &err), 0);
    cr_assert_eq(unit_file_size(store_dir), -1);
}

STORE_TEST(a_store_dir_that_is_a_symlink_is_refused)
{
    char real[PATH_MAX];
    unit_path(real, "real");
    cr_assert_eq(mkdir(real, 0700), 0);
    init_store_dir();
    cr_assert_eq(symlink(real, store_dir), 0);
    struct store *st = NULL;
    struct bus_error err = {0};
    int rc = store_open(store_dir, false, &st, &err);
    cr_assert_lt(rc, 0, "a symlinked store was opened");
    cr_assert_null(st);
    cr_assert_neq(err.reason[0], '\0');
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/lock", real);
    cr_assert_eq(unit_file_size(path), -1, "nothing is created through the link");
    snprintf(path, sizeof path, "%s/format", real);
    cr_assert_eq(unit_file_size(path), -1);
}

STORE_TEST(a_symlink_store_dir_is_refused_with_a_reason_that_says_so)
{
    char real[PATH_MAX];
    unit_path(real, "real");
    cr_assert_eq(mkdir(real, 0700), 0);
    init_store_dir();
    cr_assert_eq(symlink(real, store_dir), 0);
    struct store *st = NULL;
    struct bus_error err = {0};
    int rc = store_open(store_dir, false, &st, &err);
    cr_assert_lt(rc, 0);
    cr_assert_not_null(strstr(err.reason, "symbolic link"), "reason: %s", err.reason);
}

STORE_TEST(a_symlink_planted_inside_the_store_is_not_followed)
{
    init_store_dir();
    store_with_records(1);
    char outside[PATH_MAX];
    unit_path(outside, "outside");
    cr_assert_eq(unit_write_file(outside, "precious\n", 9), 0);
    cr_assert_eq(unlink(store_file("journal")), 0);
    cr_assert_eq(symlink(outside, store_file("journal")), 0);

    struct store *st = NULL;
    struct bus_error err = {0};
    cr_assert_eq(store_open(store_dir, false, &st, &err), 0);
    struct records r = {0};
    cr_assert_lt(store_load(st, collect, &r, NULL, &err), 0, "a symlinked journal was loaded");
    records_free(&r);
    store_close(st);
    struct buf text;
    buf_init(&text);
    cr_assert_eq(unit_read_file(outside, &text), 0);
    cr_assert_str_eq(text.data, "precious\n");
    buf_free(&text);

    /* A planted lock symlink is refused at open. */
    unit_path(store_dir, "store2");
    store_with_records(1);
    cr_assert_eq(unlink(store_file("lock")), 0);
    cr_assert_eq(symlink(outside, store_file("lock")), 0);
    cr_assert_lt(store_open(store_dir, false, &st, &err), 0);
}

static int fail_third(void *ctx, const uint8_t *rec, size_t len, bool from_snapshot)
{
    (void)from_snapshot;
    (void)rec;
    (void)len;
    int *calls = ctx;
    return ++*calls == 3 ? -EINVAL : 0;
}

STORE_TEST(a_record_that_does_not_apply_stops_the_load_with_an_error)
{
    init_store_dir();
    store_with_records(5);
    struct store *st = NULL;
    struct bus_error err = {0};
    cr_assert_eq(store_open(store_dir, false, &st, &err), 0);
    int calls = 0;
    cr_assert_eq(store_load(st, fail_third, &calls, NULL, &err), -EBADMSG);
    cr_assert_eq(calls, 3, "loading stops at the record that does not apply");
    cr_assert_neq(err.reason[0], '\0');
    store_close(st);
    /* Nothing was cut: all five are still there. */
    struct records r = {0};
    st = open_load(&r, NULL);
    cr_assert_eq(r.n, 5);
    records_free(&r);
    store_close(st);
}

/* ---------- ownership and mode of the store ---------- */

static void assert_refused(const char *why)
{
    struct store *st = NULL;
    struct bus_error err = {0};
    int rc = store_open(store_dir, false, &st, &err);
    cr_assert_eq(rc, -EPERM, "%s: store_open gave %d (%s)", why, rc, err.reason);
    cr_assert_null(st);
    cr_assert(strstr(err.reason, store_dir), "the reason names the store: %s", err.reason);
}

STORE_TEST(a_store_writable_by_others_is_refused)
{
    unit_path(store_dir, "store");
    cr_assert(mkdir(store_dir, 0700) == 0 || errno == EEXIST);
    cr_assert_eq(chmod(store_dir, 0777), 0);
    assert_refused("mode 0777");
    cr_assert_eq(chmod(store_dir, 0770), 0);
    assert_refused("mode 0770");
    cr_assert_eq(chmod(store_dir, 0755), 0);
    struct store *st = NULL;
    struct bus_error err = {0};
    cr_assert_eq(store_open(store_dir, false, &st, &err), 0, "0755 is fine: %s", err.reason);
    store_close(st);
}

STORE_TEST(a_store_owned_by_another_user_is_refused)
{
    if (geteuid() != 0)
        cr_skip_test("needs root to give the store away");
    unit_path(store_dir, "store");
    struct store *st = NULL;
    struct bus_error err = {0};
    cr_assert_eq(store_open(store_dir, false, &st, &err), 0, "%s", err.reason);
    store_close(st);
    cr_assert_eq(chown(store_dir, 4242, 4242), 0);
    assert_refused("owned by uid 4242");
    /* A read-only check (busfs --check) of someone else's store is allowed. */
    st = NULL;
    cr_assert_eq(store_open(store_dir, true, &st, &err), 0, "%s", err.reason);
    store_close(st);
}

/* ---------- damage ---------- */

/* Loads the test's store read-write; returns store_load's result, records in *out. */
static int try_load(struct records *out, struct bus_error *err)
{
    struct store *st = NULL;
    int rc = store_open(store_dir, false, &st, err);
    if (rc < 0)
        return rc;
    out->n = 0;
    rc = store_load(st, collect, out, NULL, err);
    store_close(st);
    return rc;
}

static void flip_bit(const char *path, long long at, int bit)
{
    int fd = open(path, O_RDWR);
    cr_assert_geq(fd, 0);
    unsigned char c;
    cr_assert_eq(pread(fd, &c, 1, at), 1);
    c ^= (unsigned char)(1u << bit);
    cr_assert_eq(pwrite(fd, &c, 1, at), 1);
    close(fd);
}

/* One bit flipped at every offset of a real journal: each flip is either a torn final
 * record that is cut (only when the flip is inside that last frame) or reported damage.
 * Never are records silently lost. */
static void sweep_bit_flips(const char *file, int nrec, bool with_snapshot)
{
    struct buf orig;
    buf_init(&orig);
    cr_assert_eq(unit_read_file(store_file(file), &orig), 0);
    long long last_frame = (long long)orig.len - (long long)(FRAME_SIZE + record_size(nrec));
    int damaged = 0, torn = 0;
    for (long long off = 0; off < (long long)orig.len; off++) {
        for (int bit = 0; bit < 8; bit += 3) {
            cr_assert_eq(unit_write_file(store_file(file), orig.data, orig.len), 0);
            flip_bit(store_file(file), off, bit);
            struct records r = {0};
            struct bus_error err = {0};
            int rc = try_load(&r, &err);
            size_t want = (size_t)nrec + (with_snapshot ? 2 : 0);
            if (rc == 0) {
                bool in_last = !strcmp(file, "journal") && off >= last_frame;
                cr_assert(r.n == want || (in_last && r.n == want - 1),
                          "%s: flip of bit %d at byte %lld: %zu records load, want %zu", file,
                          bit, off, r.n, want);
                torn += r.n != want;
            } else {
                cr_assert_eq(rc, -EBADMSG, "%s byte %lld bit %d: rc %d (%s)", file, off, bit, rc,
                             err.reason);
                cr_assert(strstr(err.reason, "byte") || strstr(err.reason, "header"),
                          "the reason names where: %s", err.reason);
                damaged++;
            }
            records_free(&r);
        }
    }
    cr_assert_gt(damaged, 0);
    cr_assert_gt(torn, 0, "a flip inside the last record is taken for a torn tail");
    buf_free(&orig);
}

STORE_TEST(every_bit_flip_in_a_journal_is_a_cut_torn_tail_or_reported_damage)
{
    init_store_dir();
    store_with_records(12);
    sweep_bit_flips("journal", 12, false);
}

STORE_TEST(every_bit_flip_in_a_journal_after_a_snapshot_is_reported_or_torn)
{
    init_store_dir();
    store_with_records(2);
    struct records r = {0};
    struct store *st = open_load(&r, NULL);
    records_free(&r);
    snapshot_records(st, (int[]){20, 21}, 2);
    cr_assert_eq(store_snapshot_commit(st), 0);
    for (int i = 1; i <= 6; i++)
        append_record(st, i);
    store_close(st);
    sweep_bit_flips("journal", 6, true);
}

STORE_TEST(a_zero_byte_journal_is_damage_not_an_empty_store)
{
    init_store_dir();
    store_with_records(3);
    truncate_file(store_file("journal"), 0);
    struct records r = {0};
    struct bus_error err = {0};
    cr_assert_eq(try_load(&r, &err), -EBADMSG, "%s", err.reason);
    cr_assert_eq(unit_file_size(store_file("journal")), 0, "nothing was rewritten");
    records_free(&r);
}

STORE_TEST(a_missing_journal_next_to_a_snapshot_is_damage)
{
    init_store_dir();
    store_with_records(1);
    struct records r = {0};
    struct store *st = open_load(&r, NULL);
    records_free(&r);
    snapshot_records(st, (int[]){1}, 1);
    cr_assert_eq(store_snapshot_commit(st), 0);
    append_record(st, 2);
    store_close(st);
    cr_assert_eq(unlink(store_file("journal")), 0);
    struct bus_error err = {0};
    cr_assert_eq(try_load(&r, &err), -EBADMSG, "%s", err.reason);
    records_free(&r);
}

/* Salvage keeps every record around the damage and leaves a store that loads. */
STORE_TEST(salvage_keeps_the_records_after_a_damaged_length)
{
    init_store_dir();
    store_with_records(6);
    long long rec2 = HEADER_SIZE + FRAME_SIZE + (long long)record_size(1);
    flip_bit(store_file("journal"), rec2 + 1, 2);  /* record 2's length */
    struct records r = {0};
    struct bus_error err = {0};
    cr_assert_eq(try_load(&r, &err), -EBADMSG, "%s", err.reason);
    cr_assert(strstr(err.reason, "4 intact record(s) follow"), "%s", err.reason);
    records_free(&r);

    struct store *st = NULL;
    cr_assert_eq(store_open(store_dir, false, &st, &err), 0);
    struct store_salvage_report rep;
    struct buf log;
    buf_init(&log);
    cr_assert_eq(store_salvage(st, collect, &r, &rep, &log, &err), 0, "%s", err.reason);
    store_close(st);
    records_free(&r);
    cr_assert_eq(rep.journal_kept, 5, "%s", log.data);
    cr_assert_eq(rep.lost_bytes, FRAME_SIZE + record_size(2));
    cr_assert(log.data && strstr(log.data, "lost: journal bytes"), "%s", log.data);
    char moved[PATH_MAX + 80];
    snprintf(moved, sizeof moved, "%s/journal", store_file(rep.moved_to));
    cr_assert_gt(unit_file_size(moved), 0, "the damaged journal is kept in %s", moved);
    buf_free(&log);

    st = open_load(&r, NULL);
    assert_records(&r, (int[]){1, 3, 4, 5, 6}, 5);
    records_free(&r);
    store_close(st);
}

/* ---------- the checksum ---------- */

/* The folding path (PCLMULQDQ where the CPU has it) and the table path agree on
 * every length up to 4 KiB at every alignment, and both on the standard check value. */
Test(crc32, the_folding_and_table_paths_agree_at_every_length_and_alignment,
     .timeout = UNIT_TIMEOUT)
{
    cr_assert_eq(crc32_compute("123456789", 9), 0xcbf43926u);
    cr_assert_eq(crc32_compute_portable("123456789", 9), 0xcbf43926u);
    static uint8_t data[4096 + 16];
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof data; i++) {
        x = x * 1103515245u + 12345u;
        data[i] = (uint8_t)(x >> 16);
    }
    for (size_t off = 0; off < 16; off++)
        for (size_t n = 0; n <= 4096; n++)
            cr_assert_eq(crc32_compute(data + off, n), crc32_compute_portable(data + off, n),
                         "length %zu at offset %zu", n, off);
    /* A flipped bit anywhere changes it. */
    uint32_t whole = crc32_compute(data, 1000);
    for (size_t bit = 0; bit < 1000 * 8; bit += 61) {
        data[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        cr_assert_neq(crc32_compute(data, 1000), whole, "bit %zu", bit);
        data[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
}

/* store.h — the on-disk store: a lock, a format file, one journal, one snapshot.
 *
 *   DIR/lock      flock(LOCK_EX) held for the server's life; holds its pid
 *   DIR/format    "busfs-store 1" and the store id (8 hex digits, used in msg_id)
 *   DIR/journal   header (magic, generation, header CRC) + framed records: u32 length, u32 CRC-32,
 *                 payload. ONE record per commit unit, written with ONE write(2).
 *   DIR/snapshot  header (magic, generation it covers) + framed records + an end record
 *   DIR/mark      the journal's generation and a length it held whole records up to,
 *                 written every second by the server: a journal found shorter lost
 *                 acknowledged records, and that is damage, not a torn tail
 *
 * The one thing to know: a record is either wholly in the journal or not at all.
 * Loading stops at the first frame that is cut short or fails its checksum. When no
 * good frame follows, that is a torn final record (a crash mid-append): the journal
 * is cut there, so new appends never land behind it. When good frames follow, or a
 * header fails its checksum, or the journal is missing or of a generation the
 * snapshot does not expect, or a record does not apply, the store is damaged:
 * -EBADMSG, naming the byte offset. A journal whose generation the snapshot already
 * covers is ignored: that is how a crash between writing a snapshot and starting the
 * next journal stays harmless. A non-regular file is -EMEDIUMTYPE, at once. */
#ifndef BUSFS_STORE_H
#define BUSFS_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "busfs/buf.h"
#include "busfs/error.h"

#define STORE_MAX_RECORD (256u << 20) /* one commit unit, e.g. a large broadcast */

struct store;

/* Called for every valid record, in order, from the snapshot (from_snapshot true)
 * then the journal. */
typedef int (*store_apply_fn)(void *ctx, const uint8_t *rec, size_t len, bool from_snapshot);

struct store_load_report {
	uint64_t snapshot_records;
	uint64_t journal_records;
	uint64_t torn_bytes;        /* bytes cut from the journal's tail */
	bool journal_ignored;       /* the snapshot already covered it */
};

/* Opens (creating when missing) the store at dir and takes its lock. When another
 * process holds it: -EBUSY, with its pid in the reason. readonly opens for --check:
 * no lock is required, nothing is created or truncated. */
int store_open(const char *dir, bool readonly, struct store **out, struct bus_error *err);
int store_load(struct store *st, store_apply_fn fn, void *ctx, struct store_load_report *rep,
	       struct bus_error *err);
/* Writes the server's pid into the lock file (after daemonizing). */
void store_write_pid(struct store *st);
uint32_t store_id(const struct store *st);
/* Records in DIR/mark the journal's length now, when it moved (every second). */
void store_mark(struct store *st);
/* Bytes the store uses now: snapshot plus journal. */
uint64_t store_bytes(const struct store *st);
uint64_t store_journal_bytes(const struct store *st);
uint64_t store_snapshot_bytes(const struct store *st);
/* Bytes free on the filesystem that holds the store. */
uint64_t store_fs_free(const struct store *st);

/* Appends one record (rec[0] is its type) as one frame with one write(2). On a short
 * or failed write the journal is cut back to where it was and -EIO/-ENOSPC returned. */
int store_append(struct store *st, const void *rec, size_t len);
/* Takes back the record of `len` bytes the last store_append wrote, for a change the
 * bus could not apply after all: the journal is cut back to before it. 0 or -errno. */
int store_unappend(struct store *st, size_t len);
/* Bytes ever appended to the journals (no lock needed): --sync compares it with what a
 * sync covered. */
uint64_t store_appended(const struct store *st);
/* A duplicate of the journal's descriptor, to sync without the caller's lock, and the
 * appended count a sync of it covers (*covers); -errno. */
int store_sync_handle(struct store *st, uint64_t *covers);

/* Space promised to a write before it commits: the journal's blocks for bytes more
 * (beyond the journal and what is already promised) are allocated now (fallocate,
 * FALLOC_FL_KEEP_SIZE, 1 MiB ahead when there is room), so a full filesystem gives
 * -ENOSPC here and not at the commit. store_release gives the promise back (before
 * the commit that uses it, or when the write is abandoned). store_append allocates
 * its own record's space behind the promises the same way. */
int store_reserve(struct store *st, uint64_t bytes);
void store_release(struct store *st, uint64_t bytes);
uint64_t store_reserved(const struct store *st);

/* Compaction: records written between begin and commit form the new snapshot, which
 * then replaces the old one and the journal restarts empty. */
int store_snapshot_begin(struct store *st);
int store_snapshot_add(struct store *st, const void *rec, size_t len);
int store_snapshot_commit(struct store *st);
void store_snapshot_abort(struct store *st);

/* Salvage of a damaged store (its lock held, store_load not called): every good frame
 * of the snapshot and the journal, found again past damage by its length and CRC, is
 * offered to fn; those it accepts (returns 0) are kept. The old files are kept in
 * DIR/damaged-<timestamp>/ and a good store is written in their place. What was lost
 * goes to log, one line each. */
struct store_salvage_report {
	uint64_t snapshot_kept, journal_kept;
	uint64_t dropped_records;   /* whole records fn refused */
	uint64_t lost_bytes;        /* bytes that were no whole record */
	char moved_to[64];          /* damaged-<timestamp>, relative to the store */
	uint32_t old_id, new_id;    /* the store id before and after: msg_ids change prefix */
};
int store_salvage(struct store *st, store_apply_fn fn, void *ctx, struct store_salvage_report *rep,
		  struct buf *log, struct bus_error *err);

void store_close(struct store *st);

/* CRC-32 of the zlib polynomial (core/crc32.c); _portable never uses PCLMULQDQ, for
 * the tests that compare the two. */
uint32_t crc32_compute(const void *p, size_t n);
uint32_t crc32_compute_portable(const void *p, size_t n);

#endif

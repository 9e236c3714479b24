/* store.c — the lock, the format file, the journal and the snapshot.
 *
 * Ownership: struct store owns dirfd, lockfd, journalfd and, during compaction,
 * snapfd. Everything is released by store_close(). All files are opened relative to
 * dirfd through open_regular_at (O_NOFOLLOW, O_NONBLOCK, then fstat), so a symlink,
 * FIFO or device planted in the store is refused at once, never followed or waited on.
 * Every append holds flock(LOCK_EX) on the journal for the one write(2), so a tool
 * that reads the journal under LOCK_SH (busfs --check) never sees half a record. */
#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include "busfs/regfile.h"
#include "busfs/store.h"

#define JOURNAL_MAGIC "BUSFSJ"
#define SNAPSHOT_MAGIC "BUSFSS"
#define GENERATION_MAX 0xffffffffu
#define HEADER_SIZE 16
#define FRAME_SIZE 8

struct store {
	char dir[4096];
	bool readonly;
	int dirfd;
	int lockfd;
	int journalfd;
	int snapfd;
	uint32_t id;
	uint64_t generation;       /* of the current journal */
	uint64_t journal_bytes;
	uint64_t snapshot_bytes;
	uint64_t snap_written;     /* during compaction */
	uint64_t reserved;         /* journal bytes promised to writes not yet committed */
	uint64_t allocated;        /* the journal's bytes known allocated (fallocate) */
	_Atomic uint64_t appended; /* bytes ever appended, over every journal: --sync's clock */
	struct buf snapbuf;
	/* What DIR/mark says: the journal (generation) held at least `length` bytes of
	 * whole records. A journal found shorter than that lost acknowledged records. */
	uint64_t marked_generation, marked_length;
};

static void put_le32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static uint32_t get_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_le64(uint8_t *p, uint64_t v)
{
	put_le32(p, (uint32_t)v);
	put_le32(p + 4, (uint32_t)(v >> 32));
}

static uint64_t get_le64(const uint8_t *p) { return get_le32(p) | (uint64_t)get_le32(p + 4) << 32; }

/* Header, 16 bytes. Version 2: magic "BUSFSJ2"/"BUSFSS2", a zero byte, the generation
 * (u32) and the CRC-32 of the 12 bytes before it, so a flipped bit in the header is
 * damage, never a different generation. Version 1 (magic ...1, a zero byte, u64
 * generation, no checksum) is still read; new files are always version 2. */
static void make_header(uint8_t *h, const char *magic, uint64_t gen)
{
	memset(h, 0, HEADER_SIZE);
	memcpy(h, magic, 6);
	h[6] = '2';
	put_le32(h + 8, (uint32_t)gen);
	put_le32(h + 12, crc32_compute(h, 12));
}

static bool parse_header(const uint8_t *h, size_t len, const char *magic, uint64_t *gen)
{
	if (len < HEADER_SIZE || memcmp(h, magic, 6) != 0 || h[7] != 0)
		return false;
	if (h[6] == '1') {
		*gen = get_le32(h + 8) | (uint64_t)get_le32(h + 12) << 32;
		return true;
	}
	*gen = get_le32(h + 8);
	return h[6] == '2' && get_le32(h + 12) == crc32_compute(h, 12);
}

static int write_all(int fd, const void *p, size_t n)
{
	const char *c = p;
	while (n) {
		ssize_t w = write(fd, c, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		c += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Writes a whole small file by tmp + rename, so readers see the old or the new. */
static int write_file_atomic(int dirfd, const char *name, const void *p, size_t n)
{
	char tmp[64];
	snprintf(tmp, sizeof tmp, "%s.tmp", name);
	int fd = open_regular_at(dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		return fd;
	int rc = write_all(fd, p, n);
	if (rc == 0 && fsync(fd) < 0)
		rc = -errno;
	close(fd);
	if (rc == 0 && renameat(dirfd, tmp, dirfd, name) < 0)
		rc = -errno;
	if (rc == 0)
		fsync(dirfd);
	if (rc < 0)
		unlinkat(dirfd, tmp, 0);
	return rc;
}

static int new_journal(struct store *st, uint64_t gen);

static int refuse_kind(struct store *st, const char *name, struct bus_error *err)
{
	return bus_fail(err, EMEDIUMTYPE, "%s/%s is %s, not a regular file; busfs refuses it",
			st->dir, name, regfile_kind(st->dirfd, name));
}

/* The format file with a new random store id, other than the one in st->id. */
static int write_format(struct store *st)
{
	char text[128];
	uint32_t id = st->id;
	while (id == st->id)
		if (getrandom(&id, sizeof id, 0) != sizeof id)
			id = st->id ^ (uint32_t)getpid() ^ (uint32_t)time(NULL) ^ 0x5a5a5a5au;
	int n = snprintf(text, sizeof text, "busfs-store 1\nid %08x\n", id);
	int rc = write_file_atomic(st->dirfd, "format", text, (size_t)n);
	if (rc == 0)
		st->id = id;
	return rc;
}

/* A new store: the journal first, then the format file, so that a store with a format
 * file always has its journal and a missing one is damage. */
static int create_store(struct store *st, struct bus_error *err)
{
	struct stat sb;
	if (fstatat(st->dirfd, "journal", &sb, AT_SYMLINK_NOFOLLOW) < 0 && errno == ENOENT) {
		int rc = new_journal(st, 1);
		if (rc < 0)
			return bus_fail(err, -rc, "cannot create %s/journal: %s", st->dir,
					strerror(-rc));
	}
	int rc = write_format(st);
	if (rc < 0)
		return bus_fail(err, -rc, "cannot write %s/format: %s", st->dir, strerror(-rc));
	return 0;
}

static int read_format(struct store *st, struct bus_error *err)
{
	char text[128] = "";
	int fd = open_regular_at(st->dirfd, "format", O_RDONLY, 0);
	if (fd == -ENOENT && !st->readonly)
		return create_store(st, err);
	if (fd == -EMEDIUMTYPE)
		return refuse_kind(st, "format", err);
	if (fd < 0)
		return bus_fail(err, -fd, "cannot open %s/format: %s", st->dir, strerror(-fd));
	ssize_t n = read(fd, text, sizeof text - 1);
	close(fd);
	unsigned version, id;
	if (n <= 0 || sscanf(text, "busfs-store %u\nid %8x", &version, &id) != 2)
		return bus_fail(err, EINVAL, "%s/format is not a busfs store format file", st->dir);
	if (version != 1)
		return bus_fail(err, EINVAL, "%s has store format %u; this busfs reads format 1",
				st->dir, version);
	st->id = id;
	return 0;
}

static int take_lock(struct store *st, struct bus_error *err)
{
	st->lockfd = open_regular_at(st->dirfd, "lock", O_RDWR | O_CREAT, 0600);
	if (st->lockfd == -EMEDIUMTYPE)
		return refuse_kind(st, "lock", err);
	if (st->lockfd < 0)
		return bus_fail(err, -st->lockfd, "cannot open %s/lock: %s", st->dir,
				strerror(-st->lockfd));
	if (flock(st->lockfd, LOCK_EX | LOCK_NB) == 0)
		return 0;
	if (errno != EWOULDBLOCK)
		return bus_fail(err, errno, "cannot lock %s/lock: %s", st->dir, strerror(errno));
	char pid[32] = "";
	ssize_t n = pread(st->lockfd, pid, sizeof pid - 1, 0);
	if (n > 0)
		pid[strcspn(pid, "\n")] = '\0';
	return bus_fail(err, EBUSY, "store %s is in use by pid %s", st->dir,
			n > 0 && pid[0] ? pid : "(unknown)");
}

int store_open(const char *dir, bool readonly, struct store **out, struct bus_error *err)
{
	struct store *st = calloc(1, sizeof *st);
	if (!st)
		return bus_fail(err, ENOMEM, "out of memory");
	snprintf(st->dir, sizeof st->dir, "%s", dir);
	st->readonly = readonly;
	st->dirfd = st->lockfd = st->journalfd = st->snapfd = -1;
	buf_init(&st->snapbuf);

	int rc;
	if (!readonly && mkdir(dir, 0700) < 0 && errno != EEXIST) {
		rc = bus_fail(err, errno, "cannot create store %s: %s", dir, strerror(errno));
		goto fail;
	}
	struct stat lst;
	if (lstat(dir, &lst) == 0 && S_ISLNK(lst.st_mode)) {
		rc = bus_fail(err, EINVAL, "cannot open store %s: it is a symbolic link", dir);
		goto fail;
	}
	st->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (st->dirfd < 0) {
		rc = bus_fail(err, errno, "cannot open store %s: %s", dir, strerror(errno));
		goto fail;
	}
	/* The store holds every message: it must be the server user's and closed to
	 * others, or anyone could plant or read records. */
	struct stat dst;
	if (!readonly && fstat(st->dirfd, &dst) == 0) {
		if (dst.st_uid != geteuid()) {
			rc = bus_fail(err, EPERM, "store %s belongs to uid %u, not to uid %u that runs "
				      "busfs", dir, (unsigned)dst.st_uid, (unsigned)geteuid());
			goto fail;
		}
		if (dst.st_mode & (S_IWGRP | S_IWOTH)) {
			rc = bus_fail(err, EPERM, "store %s is writable by %s (mode %04o); "
				      "chmod 700 it", dir, dst.st_mode & S_IWOTH ? "everyone" : "its group",
				      (unsigned)(dst.st_mode & 07777));
			goto fail;
		}
	}
	if (!readonly && (rc = take_lock(st, err)) < 0)
		goto fail;
	if ((rc = read_format(st, err)) < 0)
		goto fail;
	*out = st;
	return 0;
fail:
	store_close(st);
	return rc;
}

void store_write_pid(struct store *st)
{
	char pid[32];
	int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
	if (st->lockfd >= 0 && ftruncate(st->lockfd, 0) == 0)
		(void)!pwrite(st->lockfd, pid, (size_t)n, 0);
}

uint32_t store_id(const struct store *st) { return st->id; }
uint64_t store_bytes(const struct store *st) { return st->journal_bytes + st->snapshot_bytes; }
uint64_t store_journal_bytes(const struct store *st) { return st->journal_bytes; }
uint64_t store_snapshot_bytes(const struct store *st) { return st->snapshot_bytes; }

uint64_t store_fs_free(const struct store *st)
{
	struct statvfs sv;
	if (fstatvfs(st->dirfd, &sv) < 0)
		return 0;
	return (uint64_t)sv.f_bavail * sv.f_frsize;
}

/* Maps a whole store file read-only; NULL and *len = 0 for a missing or empty file,
 * *exists telling which. A non-regular file is -EMEDIUMTYPE, never waited on. */
static int map_file(struct store *st, const char *name, const uint8_t **data, size_t *len,
		    bool *exists)
{
	*data = NULL;
	*len = 0;
	*exists = false;
	int fd = open_regular_at(st->dirfd, name, O_RDONLY, 0);
	if (fd < 0)
		return fd == -ENOENT ? 0 : fd;
	*exists = true;
	if (st->readonly)
		flock(fd, LOCK_SH);
	struct stat sb;
	int rc = 0;
	if (fstat(fd, &sb) < 0) {
		rc = -errno;
	} else if (sb.st_size > 0) {
		/* Every byte is read once: mapping it all at once saves a fault per page. */
		void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd,
			       0);
		if (m == MAP_FAILED) {
			rc = -errno;
		} else {
			*data = m;
			*len = (size_t)sb.st_size;
		}
	}
	close(fd);
	return rc;
}

static void unmap(const uint8_t *data, size_t len)
{
	if (data)
		munmap((void *)data, len);
}

static int map_fail(struct store *st, const char *name, int rc, struct bus_error *err)
{
	if (rc == -EMEDIUMTYPE)
		return refuse_kind(st, name, err);
	return bus_fail(err, -rc, "cannot read %s/%s: %s", st->dir, name, strerror(-rc));
}

/* Writes journal.tmp with its header and returns an append fd on it; the caller
 * renames it into place. */
static int prepare_journal(struct store *st, uint64_t gen)
{
	uint8_t h[HEADER_SIZE];
	make_header(h, JOURNAL_MAGIC, gen);
	int fd = open_regular_at(st->dirfd, "journal.tmp", O_WRONLY | O_CREAT | O_TRUNC | O_APPEND,
				 0600);
	if (fd < 0)
		return fd;
	int rc = write_all(fd, h, sizeof h);
	if (rc < 0) {
		close(fd);
		unlinkat(st->dirfd, "journal.tmp", 0);
		return rc;
	}
	return fd;
}

static void use_journal(struct store *st, int fd, uint64_t gen)
{
	if (st->journalfd >= 0)
		close(st->journalfd);
	st->journalfd = fd;
	st->generation = gen;
	st->journal_bytes = HEADER_SIZE;
	st->allocated = HEADER_SIZE;
}

static int new_journal(struct store *st, uint64_t gen)
{
	int fd = prepare_journal(st, gen);
	if (fd < 0)
		return fd;
	if (renameat(st->dirfd, "journal.tmp", st->dirfd, "journal") < 0) {
		int rc = -errno;
		close(fd);
		unlinkat(st->dirfd, "journal.tmp", 0);
		return rc;
	}
	use_journal(st, fd, gen);
	return 0;
}

/* Whether a whole, non-empty frame with a good checksum starts at off. */
static bool good_frame(const uint8_t *data, size_t len, size_t off)
{
	if (off + FRAME_SIZE > len)
		return false;
	uint32_t rlen = get_le32(data + off);
	if (rlen == 0 || rlen > STORE_MAX_RECORD || rlen > len - off - FRAME_SIZE)
		return false;
	return crc32_compute(data + off + FRAME_SIZE, rlen) == get_le32(data + off + 4);
}

/* Resynchronisation: the first offset from `from` on where a good frame starts, or 0. */
static size_t next_good_frame(const uint8_t *data, size_t len, size_t from)
{
	for (size_t p = from; p + FRAME_SIZE <= len; p++)
		if (good_frame(data, len, p))
			return p;
	return 0;
}

/* The good frames after a bad one at `bad`: how many, and where the first starts. A
 * torn final record has none; any other damage has at least one. */
static uint64_t intact_after(const uint8_t *data, size_t len, size_t bad, size_t *first)
{
	uint64_t n = 0;
	*first = 0;
	for (size_t p = next_good_frame(data, len, bad + 1); p;
	     p = next_good_frame(data, len, p + FRAME_SIZE + get_le32(data + p))) {
		if (!n)
			*first = p;
		n++;
	}
	return n;
}

/* Walks the frames of data[HEADER_SIZE..len). Returns the offset after the last valid
 * frame; *ended is set when a zero-length end frame was met. */
static int walk_frames(const uint8_t *data, size_t len, bool snapshot, store_apply_fn fn,
		       void *ctx, uint64_t *count, size_t *valid_end, bool *ended)
{
	size_t off = HEADER_SIZE;
	*ended = false;
	while (off + FRAME_SIZE <= len) {
		uint32_t rlen = get_le32(data + off);
		uint32_t crc = get_le32(data + off + 4);
		if (rlen > STORE_MAX_RECORD || rlen > len - off - FRAME_SIZE)
			break;
		if (crc32_compute(data + off + FRAME_SIZE, rlen) != crc)
			break;
		if (rlen == 0) {
			/* Only a snapshot has an end frame; in a journal it is a zero-filled tail. */
			if (!snapshot)
				break;
			off += FRAME_SIZE;
			*ended = true;
			break;
		}
		int rc = fn(ctx, data + off + FRAME_SIZE, rlen, snapshot);
		if (rc < 0) {
			*valid_end = off;
			return rc;
		}
		(*count)++;
		off += FRAME_SIZE + rlen;
	}
	*valid_end = off;
	return 0;
}

/* The reason for damage at byte `bad` of name, whose good records number `good`. */
static int damaged_at(struct store *st, const char *name, const uint8_t *data, size_t len,
		      size_t bad, uint64_t good, struct bus_error *err)
{
	size_t first;
	uint64_t after = intact_after(data, len, bad, &first);
	if (!after)
		return bus_fail(err, EBADMSG, "%s/%s is damaged at byte %zu of %zu, after record "
				"%" PRIu64, st->dir, name, bad, len, good);
	return bus_fail(err, EBADMSG, "%s/%s is damaged at byte %zu, after record %" PRIu64 "; %"
			PRIu64 " intact record(s) follow from byte %zu", st->dir, name, bad, good,
			after, first);
}

static int load_snapshot(struct store *st, store_apply_fn fn, void *ctx,
			 struct store_load_report *rep, uint64_t *gen, bool *exists,
			 struct bus_error *err)
{
	const uint8_t *data;
	size_t len, end;
	bool ended;
	int rc = map_file(st, "snapshot", &data, &len, exists);
	if (rc < 0)
		return map_fail(st, "snapshot", rc, err);
	if (!*exists)
		return 0;
	if (!parse_header(data, len, SNAPSHOT_MAGIC, gen)) {
		unmap(data, len);
		return bus_fail(err, EBADMSG, "%s/snapshot has a damaged header (%zu bytes)", st->dir,
				len);
	}
	rc = walk_frames(data, len, true, fn, ctx, &rep->snapshot_records, &end, &ended);
	if (rc < 0)
		rc = bus_fail(err, EBADMSG, "%s/snapshot: record %" PRIu64 " at byte %zu (kind %u) "
			      "does not apply", st->dir, rep->snapshot_records + 1, end,
			      data[end + FRAME_SIZE]);
	else if (!ended || end != len)
		rc = damaged_at(st, "snapshot", data, len, end, rep->snapshot_records, err);
	unmap(data, len);
	st->snapshot_bytes = len;
	return rc;
}

/* Puts the journal into use after loading: its torn tail (if any) cut at end. */
static int resume_journal(struct store *st, uint64_t gen, size_t end, size_t len,
			  struct bus_error *err)
{
	st->generation = gen;
	if (st->readonly) {
		st->journal_bytes = len;
		return 0;
	}
	if (st->journalfd >= 0)
		close(st->journalfd);
	st->journalfd = open_regular_at(st->dirfd, "journal", O_WRONLY | O_APPEND, 0);
	if (st->journalfd < 0)
		return bus_fail(err, -st->journalfd, "cannot open %s/journal: %s", st->dir,
				strerror(-st->journalfd));
	if (end != len && ftruncate(st->journalfd, (off_t)end) < 0)
		return bus_fail(err, errno, "cannot cut the torn tail of %s/journal: %s", st->dir,
				strerror(errno));
	st->journal_bytes = end;
	st->allocated = end;
	return 0;
}

/* The journal must be there (the store creates it before its format file), whole in
 * its header, and of the generation the snapshot expects: the one after the snapshot's,
 * or the snapshot's own when a crash came between the two renames of a compaction. */
static int load_journal(struct store *st, store_apply_fn fn, void *ctx,
			struct store_load_report *rep, uint64_t snap_gen, bool have_snap,
			struct bus_error *err)
{
	const uint8_t *data;
	size_t len, end;
	bool ended, exists;
	uint64_t jgen = 0;
	int rc = map_file(st, "journal", &data, &len, &exists);
	if (rc < 0)
		return map_fail(st, "journal", rc, err);
	if (!exists)
		return bus_fail(err, EBADMSG, "%s/journal is missing", st->dir);
	if (!parse_header(data, len, JOURNAL_MAGIC, &jgen)) {
		unmap(data, len);
		return bus_fail(err, EBADMSG, "%s/journal has a damaged header (%zu bytes)", st->dir,
				len);
	}
	if (jgen != snap_gen + 1 && (jgen != snap_gen || !have_snap)) {
		unmap(data, len);
		return bus_fail(err, EBADMSG, "%s/journal is of generation %" PRIu64 "; the "
				"snapshot expects %" PRIu64, st->dir, jgen, snap_gen + 1);
	}
	if (jgen == snap_gen) {
		unmap(data, len);
		rep->journal_ignored = true;
		if (st->readonly)
			return 0;
		rc = new_journal(st, snap_gen + 1);
		return rc < 0 ? bus_fail(err, -rc, "cannot create %s/journal: %s", st->dir,
					 strerror(-rc)) : 0;
	}
	rc = walk_frames(data, len, false, fn, ctx, &rep->journal_records, &end, &ended);
	if (rc < 0)
		rc = bus_fail(err, EBADMSG, "%s/journal: record %" PRIu64 " at byte %zu (kind %u) "
			      "does not apply", st->dir, rep->journal_records + 1, end,
			      data[end + FRAME_SIZE]);
	else if (end != len && next_good_frame(data, len, end + 1))
		rc = damaged_at(st, "journal", data, len, end, rep->journal_records, err);
	else if (st->marked_generation == jgen && end < st->marked_length)
		rc = bus_fail(err, EBADMSG, "%s/journal holds %zu bytes of whole records (%" PRIu64
			      " records), but the store recorded %" PRIu64 ": %" PRIu64 " bytes of "
			      "acknowledged records are missing or damaged", st->dir, end,
			      rep->journal_records, st->marked_length, st->marked_length - end);
	unmap(data, len);
	if (rc < 0)
		return rc;
	rep->torn_bytes = len - end;
	return resume_journal(st, jgen, end, len, err);
}

/* DIR/mark: u64 generation, u64 length, u32 CRC-32 of the 16 bytes before it. A
 * missing or unreadable mark checks nothing (a store from before marks, or one a
 * crash caught while it was first written). */
#define MARK_SIZE 20

static int read_mark(struct store *st, struct bus_error *err)
{
	const uint8_t *data;
	size_t len;
	bool exists;
	st->marked_generation = st->marked_length = 0;
	int rc = map_file(st, "mark", &data, &len, &exists);
	if (rc < 0)
		return map_fail(st, "mark", rc, err);
	if (len == MARK_SIZE && crc32_compute(data, 16) == get_le32(data + 16)) {
		st->marked_generation = get_le64(data);
		st->marked_length = get_le64(data + 8);
	}
	unmap(data, len);
	return 0;
}

void store_mark(struct store *st)
{
	if (st->readonly || st->journalfd < 0 || (st->marked_generation == st->generation &&
						  st->marked_length == st->journal_bytes))
		return;
	uint8_t m[MARK_SIZE];
	put_le64(m, st->generation);
	put_le64(m + 8, st->journal_bytes);
	put_le32(m + 16, crc32_compute(m, 16));
	int fd = open_regular_at(st->dirfd, "mark", O_WRONLY | O_CREAT, 0600);
	if (fd < 0)
		return;
	if (pwrite(fd, m, sizeof m, 0) == (ssize_t)sizeof m) {
		st->marked_generation = st->generation;
		st->marked_length = st->journal_bytes;
	}
	close(fd);
}

int store_load(struct store *st, store_apply_fn fn, void *ctx, struct store_load_report *rep,
	       struct bus_error *err)
{
	struct store_load_report local;
	if (!rep)
		rep = &local;
	memset(rep, 0, sizeof *rep);
	int mrc = read_mark(st, err);
	if (mrc < 0)
		return mrc;
	uint64_t snap_gen = 0;
	bool have_snap;
	int rc = load_snapshot(st, fn, ctx, rep, &snap_gen, &have_snap, err);
	if (rc == 0)
		rc = load_journal(st, fn, ctx, rep, snap_gen, have_snap, err);
	return rc;
}

/* ---------- salvage ---------- */

struct salvage {
	struct store *st;
	store_apply_fn fn;
	void *ctx;
	struct buf *log;
	struct store_salvage_report *rep;
};

/* Keeps, framed in out, every good frame of data whose record applies; resynchronises
 * past damage at the next good frame. Logs each unreadable range and dropped record. */
static void salvage_frames(struct salvage *sv, const char *name, const uint8_t *data, size_t len,
			   bool snapshot, struct buf *out)
{
	size_t p = HEADER_SIZE;
	while (p < len) {
		if (snapshot && p + FRAME_SIZE == len && !get_le32(data + p) && !get_le32(data + p + 4))
			break; /* the end frame */
		if (!good_frame(data, len, p)) {
			size_t q = next_good_frame(data, len, p + 1);
			size_t stop = q ? q : len;
			buf_printf(sv->log, "lost: %s bytes %zu..%zu (%zu bytes) are no whole record\n",
				   name, p, stop, stop - p);
			sv->rep->lost_bytes += stop - p;
			if (!q)
				break;
			p = q;
			continue;
		}
		uint32_t rlen = get_le32(data + p);
		if (sv->fn(sv->ctx, data + p + FRAME_SIZE, rlen, snapshot) == 0) {
			buf_append(out, data + p, FRAME_SIZE + rlen);
			(*(snapshot ? &sv->rep->snapshot_kept : &sv->rep->journal_kept))++;
		} else {
			buf_printf(sv->log, "lost: %s record at byte %zu (kind %u, %u bytes) does not "
				   "apply\n", name, p, data[p + FRAME_SIZE], rlen);
			sv->rep->dropped_records++;
		}
		p += FRAME_SIZE + rlen;
	}
}

/* Reads one of the two files for salvage: a missing, unreadable or non-regular file
 * gives nothing; a damaged header is logged and its frames still read. */
static bool salvage_read(struct salvage *sv, const char *name, const char *magic,
			 struct buf *out, uint64_t *gen, bool *gen_ok)
{
	const uint8_t *data;
	size_t len;
	bool exists;
	*gen_ok = false;
	int rc = map_file(sv->st, name, &data, &len, &exists);
	if (rc < 0)
		buf_printf(sv->log, "lost: %s cannot be read: %s\n", name,
			   rc == -EMEDIUMTYPE ? regfile_kind(sv->st->dirfd, name) : strerror(-rc));
	if (rc < 0 || !exists)
		return rc < 0;
	*gen_ok = parse_header(data, len, magic, gen);
	if (!*gen_ok)
		buf_printf(sv->log, "damaged: %s header (%zu bytes)\n", name, len);
	if (len > HEADER_SIZE)
		salvage_frames(sv, name, data, len, magic[5] == 'S', out);
	unmap(data, len);
	return true;
}

static int write_whole(struct store *st, const char *name, const char *magic, uint64_t gen,
		       const struct buf *frames, bool end)
{
	struct buf b;
	buf_init(&b);
	uint8_t h[HEADER_SIZE], zero[FRAME_SIZE] = {0};
	make_header(h, magic, gen);
	buf_append(&b, h, sizeof h);
	buf_append(&b, frames->data, frames->len);
	if (end)
		buf_append(&b, zero, sizeof zero);
	int rc = buf_ok(&b) ? 0 : -ENOMEM;
	int fd = rc ? -1 : open_regular_at(st->dirfd, name, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (!rc && fd < 0)
		rc = fd;
	if (!rc)
		rc = write_all(fd, b.data, b.len);
	if (!rc && fsync(fd) < 0)
		rc = -errno;
	if (fd >= 0)
		close(fd);
	buf_free(&b);
	return rc;
}

/* Links (or, for a non-regular file, moves) each old file into damaged-<timestamp>/. */
static int keep_damaged(struct store *st, struct store_salvage_report *rep)
{
	time_t now = time(NULL);
	struct tm tm;
	gmtime_r(&now, &tm);
	char stamp[32];
	strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
	int n = 0;
	do {
		snprintf(rep->moved_to, sizeof rep->moved_to, n ? "damaged-%s-%d" : "damaged-%s", stamp,
			 n);
		n++;
	} while (mkdirat(st->dirfd, rep->moved_to, 0700) < 0 && errno == EEXIST && n < 100);
	int dfd = openat(st->dirfd, rep->moved_to, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dfd < 0)
		return -errno;
	static const char *const names[] = {"snapshot", "journal", "snapshot.tmp", "journal.tmp"};
	int rc = 0;
	for (size_t i = 0; i < 4 && rc == 0; i++) {
		struct stat sb;
		if (fstatat(st->dirfd, names[i], &sb, AT_SYMLINK_NOFOLLOW) < 0)
			continue;
		bool plain = S_ISREG(sb.st_mode) && i < 2;
		if ((plain ? linkat(st->dirfd, names[i], dfd, names[i], 0)
			   : renameat(st->dirfd, names[i], dfd, names[i])) < 0)
			rc = -errno;
	}
	close(dfd);
	return rc;
}

/* Order: the old files are linked into damaged-*, the rebuilt ones written under
 * temporary names, then renamed over the old: snapshot first, journal last. The
 * rebuilt snapshot keeps the old generation, so at every instant the store loads or
 * can be salvaged again from what it holds. */
int store_salvage(struct store *st, store_apply_fn fn, void *ctx, struct store_salvage_report *rep,
		  struct buf *log, struct bus_error *err)
{
	memset(rep, 0, sizeof *rep);
	struct salvage sv = {st, fn, ctx, log, rep};
	struct buf snap, jour;
	buf_init(&snap);
	buf_init(&jour);
	uint64_t sgen = 0, jgen = 0;
	bool sgen_ok = false, jgen_ok = false;
	bool have_snap = salvage_read(&sv, "snapshot", SNAPSHOT_MAGIC, &snap, &sgen, &sgen_ok);
	if (!sgen_ok || sgen == 0 || sgen >= GENERATION_MAX)
		sgen = 1;
	const uint8_t *jd;
	size_t jl;
	bool jexists;
	/* A journal the snapshot covers (a compaction's crash window) repeats it: skip it. */
	if (have_snap && map_file(st, "journal", &jd, &jl, &jexists) == 0 && jexists) {
		jgen_ok = parse_header(jd, jl, JOURNAL_MAGIC, &jgen) && jgen == sgen;
		unmap(jd, jl);
	}
	if (jgen_ok)
		buf_printf(log, "note: the journal is covered by the snapshot and is not replayed\n");
	else
		salvage_read(&sv, "journal", JOURNAL_MAGIC, &jour, &jgen, &jgen_ok);
	int rc = buf_ok(&snap) && buf_ok(&jour) ? 0 : -ENOMEM;
	if (rc == 0)
		rc = keep_damaged(st, rep);
	if (rc == 0 && have_snap)
		rc = write_whole(st, "snapshot.tmp", SNAPSHOT_MAGIC, sgen, &snap, true);
	if (rc == 0)
		rc = write_whole(st, "journal.tmp", JOURNAL_MAGIC, have_snap ? sgen + 1 : 1, &jour,
				 false);
	if (rc == 0 && have_snap && renameat(st->dirfd, "snapshot.tmp", st->dirfd, "snapshot") < 0)
		rc = -errno;
	if (rc == 0 && renameat(st->dirfd, "journal.tmp", st->dirfd, "journal") < 0)
		rc = -errno;
	/* The rebuilt journal starts again: the old mark speaks of the damaged one. */
	if (rc == 0 && unlinkat(st->dirfd, "mark", 0) < 0 && errno != ENOENT)
		rc = -errno;
	/* What was lost may have used message numbers the counter no longer covers: a new
	 * store id keeps every msg_id unique whatever it was. */
	rep->old_id = st->id;
	if (rc == 0)
		rc = write_format(st);
	rep->new_id = st->id;
	buf_free(&snap);
	buf_free(&jour);
	if (rc < 0)
		return bus_fail(err, -rc, "cannot rebuild %s: %s", st->dir, strerror(-rc));
	return 0;
}

/* ---------- space ---------- */

#define RESERVE_CHUNK (1u << 20)

/* Makes the journal's blocks up to `end` allocated (its size unchanged), a chunk ahead
 * when the filesystem has room, else exactly. A filesystem without fallocate (or a
 * journal not open for writing) is taken as having the space: writes then fail as
 * before, never worse. */
static int allocate_to(struct store *st, int fd, uint64_t *allocated, uint64_t end)
{
	if (end <= *allocated)
		return 0;
	uint64_t ahead = (end + RESERVE_CHUNK - 1) / RESERVE_CHUNK * RESERVE_CHUNK;
	const uint64_t tries[2] = {ahead, end};
	for (int i = 0; i < 2; i++) {
		if (fallocate(fd, FALLOC_FL_KEEP_SIZE, (off_t)*allocated,
			      (off_t)(tries[i] - *allocated)) == 0) {
			*allocated = tries[i];
			return 0;
		}
		if (errno == EOPNOTSUPP || errno == ENOSYS) {
			*allocated = UINT64_MAX;
			return 0;
		}
		if (errno != ENOSPC && errno != EDQUOT)
			return -errno;
	}
	(void)st;
	return -ENOSPC;
}

int store_reserve(struct store *st, uint64_t bytes)
{
	if (st->journalfd < 0)
		return -EIO;
	int rc = allocate_to(st, st->journalfd, &st->allocated,
			     st->journal_bytes + st->reserved + bytes);
	if (rc == 0)
		st->reserved += bytes;
	return rc;
}

void store_release(struct store *st, uint64_t bytes)
{
	st->reserved = bytes < st->reserved ? st->reserved - bytes : 0;
}

uint64_t store_reserved(const struct store *st) { return st->reserved; }

int store_append(struct store *st, const void *rec, size_t len)
{
	if (st->journalfd < 0 || len == 0 || len > STORE_MAX_RECORD)
		return -EIO;
	uint8_t frame[FRAME_SIZE];
	put_le32(frame, (uint32_t)len);
	put_le32(frame + 4, crc32_compute(rec, len));
	struct iovec iov[2] = {{frame, FRAME_SIZE}, {(void *)rec, len}};
	size_t total = FRAME_SIZE + len;

	/* The record's blocks are allocated first, behind what is promised to others:
	 * a full filesystem then fails here, before a byte is written. */
	int rc = allocate_to(st, st->journalfd, &st->allocated,
			     st->journal_bytes + st->reserved + total);
	if (rc < 0)
		return rc;
	flock(st->journalfd, LOCK_EX);
	ssize_t n = writev(st->journalfd, iov, 2);
	if (n != (ssize_t)total) {
		rc = n < 0 ? -errno : -ENOSPC;
		/* Cut a partial frame back off, so the next append is not behind it. */
		if (ftruncate(st->journalfd, (off_t)st->journal_bytes) < 0)
			rc = -EIO;
		st->allocated = st->journal_bytes;
	} else {
		st->journal_bytes += total;
		atomic_fetch_add(&st->appended, total);
	}
	flock(st->journalfd, LOCK_UN);
	return rc;
}

uint64_t store_appended(const struct store *st) { return atomic_load(&st->appended); }

int store_sync_handle(struct store *st, uint64_t *covers)
{
	if (st->journalfd < 0)
		return -EIO;
	int fd = fcntl(st->journalfd, F_DUPFD_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/* A compaction since put what came before into a snapshot it synced itself. */
	*covers = atomic_load(&st->appended);
	return fd;
}

int store_unappend(struct store *st, size_t len)
{
	uint64_t total = FRAME_SIZE + (uint64_t)len;
	if (st->journalfd < 0 || total > st->journal_bytes)
		return -EINVAL;
	flock(st->journalfd, LOCK_EX);
	int rc = ftruncate(st->journalfd, (off_t)(st->journal_bytes - total)) < 0 ? -errno : 0;
	if (rc == 0) {
		st->journal_bytes -= total;
		/* The cut freed the blocks ahead too; give the promised ones back their room. */
		st->allocated = st->journal_bytes;
		(void)allocate_to(st, st->journalfd, &st->allocated,
				  st->journal_bytes + st->reserved);
	}
	flock(st->journalfd, LOCK_UN);
	return rc;
}

static int snap_flush(struct store *st)
{
	int rc = write_all(st->snapfd, st->snapbuf.data, st->snapbuf.len);
	st->snap_written += st->snapbuf.len;
	buf_reset(&st->snapbuf);
	return rc;
}

int store_snapshot_begin(struct store *st)
{
	if (st->generation >= GENERATION_MAX)
		return -EOVERFLOW;
	st->snapfd = open_regular_at(st->dirfd, "snapshot.tmp", O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (st->snapfd < 0)
		return st->snapfd;
	uint8_t h[HEADER_SIZE];
	make_header(h, SNAPSHOT_MAGIC, st->generation);
	buf_reset(&st->snapbuf);
	st->snap_written = 0;
	buf_append(&st->snapbuf, h, sizeof h);
	return 0;
}

int store_snapshot_add(struct store *st, const void *rec, size_t len)
{
	uint8_t frame[FRAME_SIZE];
	put_le32(frame, (uint32_t)len);
	put_le32(frame + 4, crc32_compute(rec, len));
	buf_append(&st->snapbuf, frame, FRAME_SIZE);
	buf_append(&st->snapbuf, rec, len);
	if (!buf_ok(&st->snapbuf))
		return -ENOMEM;
	return st->snapbuf.len >= (1u << 20) ? snap_flush(st) : 0;
}

void store_snapshot_abort(struct store *st)
{
	if (st->snapfd >= 0) {
		close(st->snapfd);
		st->snapfd = -1;
		unlinkat(st->dirfd, "snapshot.tmp", 0);
	}
	buf_free(&st->snapbuf);
}

/* Order: the snapshot and the next journal are both written under temporary names;
 * then the snapshot is renamed into place, then the journal. A crash between the two
 * renames leaves the old journal, which the snapshot covers and the next load ignores.
 * If the journal cannot be put in place, appends fail from then on (EIO) rather than
 * land in a journal that the next load would ignore. */
int store_snapshot_commit(struct store *st)
{
	uint8_t frame[FRAME_SIZE];
	put_le32(frame, 0);
	put_le32(frame + 4, 0); /* the CRC-32 of no bytes */
	buf_append(&st->snapbuf, frame, FRAME_SIZE);
	/* On a disk, each step is on stable storage before the next one names it, so a
	 * power cut leaves one of the states a kill -9 can (the old snapshot and journal,
	 * or the new snapshot with the old or the new journal): free on tmpfs. */
	int rc = buf_ok(&st->snapbuf) ? snap_flush(st) : -ENOMEM;
	if (rc == 0 && fsync(st->snapfd) < 0)
		rc = -errno;
	if (rc == 0 && close(st->snapfd) < 0)
		rc = -errno;
	st->snapfd = -1;
	buf_free(&st->snapbuf);
	int jfd = rc == 0 ? prepare_journal(st, st->generation + 1) : -1;
	if (rc == 0 && jfd < 0)
		rc = jfd;
	/* What writes were promised must fit in the new journal too, or it is not used. */
	uint64_t jalloc = HEADER_SIZE;
	if (rc == 0)
		rc = allocate_to(st, jfd, &jalloc, HEADER_SIZE + st->reserved);
	if (rc == 0 && fsync(jfd) < 0)
		rc = -errno;
	if (rc == 0 && renameat(st->dirfd, "snapshot.tmp", st->dirfd, "snapshot") < 0)
		rc = -errno;
	if (rc == 0)
		fsync(st->dirfd);
	if (rc < 0) {
		unlinkat(st->dirfd, "snapshot.tmp", 0);
		if (jfd >= 0) {
			close(jfd);
			unlinkat(st->dirfd, "journal.tmp", 0);
		}
		return rc;
	}
	st->snapshot_bytes = st->snap_written;
	if (renameat(st->dirfd, "journal.tmp", st->dirfd, "journal") < 0) {
		rc = -errno;
		close(jfd);
		close(st->journalfd);
		st->journalfd = -1;
		return rc;
	}
	fsync(st->dirfd);
	use_journal(st, jfd, st->generation + 1);
	st->allocated = jalloc;
	return 0;
}

void store_close(struct store *st)
{
	if (!st)
		return;
	store_snapshot_abort(st);
	if (st->journalfd >= 0)
		close(st->journalfd);
	if (st->lockfd >= 0)
		close(st->lockfd);
	if (st->dirfd >= 0)
		close(st->dirfd);
	free(st);
}

/* store.c — the lock, the format file, the journal and the snapshot.
 *
 * Ownership: struct store owns dirfd, lockfd, journalfd and, during compaction,
 * snapfd. Everything is released by store_close(). All files are opened relative to
 * dirfd with O_NOFOLLOW, so a symlink planted in the store is refused, never followed.
 * Every append holds flock(LOCK_EX) on the journal for the one write(2), so a tool
 * that reads the journal under LOCK_SH (busfs --check) never sees half a record. */
#include <errno.h>
#include <fcntl.h>
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

#include "busfs/store.h"

#define JOURNAL_MAGIC "BUSFSJ1"
#define SNAPSHOT_MAGIC "BUSFSS1"
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
	struct buf snapbuf;
};

/* CRC-32 (the zlib polynomial), eight bytes a step: table k holds the CRC of a byte
 * followed by k zero bytes ("slicing by 8"). */
static uint32_t crc_table[8][256];

static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
		crc_table[0][i] = c;
	}
	for (uint32_t i = 0; i < 256; i++)
		for (int t = 1; t < 8; t++)
			crc_table[t][i] = crc_table[0][crc_table[t - 1][i] & 0xff] ^
					  (crc_table[t - 1][i] >> 8);
}

uint32_t crc32_compute(const void *p, size_t n)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	pthread_once(&once, crc_init);
	const uint8_t *b = p;
	uint32_t c = 0xffffffffu;
	for (; n >= 8; n -= 8, b += 8) {
		uint32_t lo = c ^ ((uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
				   (uint32_t)b[3] << 24);
		uint32_t hi = (uint32_t)b[4] | (uint32_t)b[5] << 8 | (uint32_t)b[6] << 16 |
			      (uint32_t)b[7] << 24;
		c = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
		    crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^
		    crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
		    crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
	}
	for (; n; n--, b++)
		c = crc_table[0][(c ^ *b) & 0xff] ^ (c >> 8);
	return c ^ 0xffffffffu;
}

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

static void make_header(uint8_t *h, const char *magic, uint64_t gen)
{
	memset(h, 0, HEADER_SIZE);
	memcpy(h, magic, 7);
	put_le32(h + 8, (uint32_t)gen);
	put_le32(h + 12, (uint32_t)(gen >> 32));
}

static bool parse_header(const uint8_t *h, size_t len, const char *magic, uint64_t *gen)
{
	if (len < HEADER_SIZE || memcmp(h, magic, 7) != 0)
		return false;
	*gen = get_le32(h + 8) | (uint64_t)get_le32(h + 12) << 32;
	return true;
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
	int fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	int rc = write_all(fd, p, n);
	close(fd);
	if (rc == 0 && renameat(dirfd, tmp, dirfd, name) < 0)
		rc = -errno;
	if (rc < 0)
		unlinkat(dirfd, tmp, 0);
	return rc;
}

static int read_format(struct store *st, struct bus_error *err)
{
	char text[128] = "";
	int fd = openat(st->dirfd, "format", O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 && errno == ENOENT && !st->readonly) {
		uint32_t id;
		if (getrandom(&id, sizeof id, 0) != sizeof id)
			id = (uint32_t)getpid() ^ (uint32_t)time(NULL);
		int n = snprintf(text, sizeof text, "busfs-store 1\nid %08x\n", id);
		int rc = write_file_atomic(st->dirfd, "format", text, (size_t)n);
		if (rc < 0)
			return bus_fail(err, -rc, "cannot write %s/format: %s", st->dir, strerror(-rc));
		st->id = id;
		return 0;
	}
	if (fd < 0)
		return bus_fail(err, errno, "cannot open %s/format: %s", st->dir, strerror(errno));
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
	st->lockfd = openat(st->dirfd, "lock", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (st->lockfd < 0)
		return bus_fail(err, errno, "cannot open %s/lock: %s", st->dir, strerror(errno));
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

/* Maps a whole store file read-only; *len = 0 and NULL for a missing or empty file. */
static int map_file(struct store *st, const char *name, const uint8_t **data, size_t *len)
{
	*data = NULL;
	*len = 0;
	int fd = openat(st->dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	if (st->readonly)
		flock(fd, LOCK_SH);
	struct stat sb;
	int rc = 0;
	if (fstat(fd, &sb) < 0) {
		rc = -errno;
	} else if (!S_ISREG(sb.st_mode)) {
		rc = -EINVAL;
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

/* What a crash can leave after the last whole record: one frame cut short (its
 * length reaches past the end, or its bytes end the file but fail the checksum), or
 * zeros. Anything else after `end` is damage, and cutting it would drop records. */
static bool tail_is_torn(const uint8_t *data, size_t len, size_t end)
{
	if (end + FRAME_SIZE > len)
		return true;
	uint32_t rlen = get_le32(data + end);
	if (rlen > STORE_MAX_RECORD || (uint64_t)end + FRAME_SIZE + rlen >= len)
		return true;
	for (size_t i = end; i < len; i++)
		if (data[i])
			return false;
	return true;
}

/* Writes journal.tmp with its header and returns an append fd on it; the caller
 * renames it into place. */
static int prepare_journal(struct store *st, uint64_t gen)
{
	uint8_t h[HEADER_SIZE];
	make_header(h, JOURNAL_MAGIC, gen);
	int fd = openat(st->dirfd, "journal.tmp",
			O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
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

int store_load(struct store *st, store_apply_fn fn, void *ctx, struct store_load_report *rep,
	       struct bus_error *err)
{
	struct store_load_report local;
	if (!rep)
		rep = &local;
	memset(rep, 0, sizeof *rep);

	const uint8_t *data;
	size_t len, end;
	bool ended;
	uint64_t snap_gen = 0;
	int rc = map_file(st, "snapshot", &data, &len);
	if (rc < 0)
		return bus_fail(err, -rc, "cannot read %s/snapshot: %s", st->dir, strerror(-rc));
	if (data) {
		if (!parse_header(data, len, SNAPSHOT_MAGIC, &snap_gen)) {
			munmap((void *)data, len);
			return bus_fail(err, EIO, "%s/snapshot has no valid header", st->dir);
		}
		rc = walk_frames(data, len, true, fn, ctx, &rep->snapshot_records, &end, &ended);
		munmap((void *)data, len);
		if (rc < 0)
			return bus_fail(err, EIO, "%s/snapshot: record %llu does not apply", st->dir,
					(unsigned long long)rep->snapshot_records + 1);
		if (!ended || end != len)
			return bus_fail(err, EIO, "%s/snapshot is damaged at byte %zu", st->dir, end);
		st->snapshot_bytes = len;
	}

	rc = map_file(st, "journal", &data, &len);
	if (rc < 0)
		return bus_fail(err, -rc, "cannot read %s/journal: %s", st->dir, strerror(-rc));
	uint64_t jgen = 0;
	if (data && !parse_header(data, len, JOURNAL_MAGIC, &jgen)) {
		munmap((void *)data, len);
		return bus_fail(err, EIO, "%s/journal has no valid header", st->dir);
	}
	if (data && jgen > snap_gen) {
		rc = walk_frames(data, len, false, fn, ctx, &rep->journal_records, &end, &ended);
		bool torn = rc < 0 || tail_is_torn(data, len, end);
		munmap((void *)data, len);
		if (rc < 0)
			return bus_fail(err, EIO, "%s/journal: record %llu does not apply", st->dir,
					(unsigned long long)rep->journal_records + 1);
		rep->torn_bytes = len - end;
		if (!torn) {
			return bus_fail(err, EIO, "%s/journal is damaged at byte %zu, %zu bytes before "
					"its end; that is no torn write (busfs --check tells more)",
					st->dir, end, len - end);
		}
		if (st->readonly) {
			st->journal_bytes = len;
			st->generation = jgen;
			return 0;
		}
		st->journalfd = openat(st->dirfd, "journal", O_WRONLY | O_APPEND | O_NOFOLLOW | O_CLOEXEC);
		if (st->journalfd < 0)
			return bus_fail(err, errno, "cannot open %s/journal: %s", st->dir, strerror(errno));
		if (end != len && ftruncate(st->journalfd, (off_t)end) < 0)
			return bus_fail(err, errno, "cannot cut the torn tail of %s/journal: %s", st->dir,
					strerror(errno));
		st->generation = jgen;
		st->journal_bytes = end;
		return 0;
	}
	if (data) {
		munmap((void *)data, len);
		rep->journal_ignored = true;
	}
	if (st->readonly)
		return 0;
	rc = new_journal(st, snap_gen + 1);
	if (rc < 0)
		return bus_fail(err, -rc, "cannot create %s/journal: %s", st->dir, strerror(-rc));
	return 0;
}

int store_append(struct store *st, const void *rec, size_t len)
{
	if (st->journalfd < 0 || len == 0 || len > STORE_MAX_RECORD)
		return -EIO;
	uint8_t frame[FRAME_SIZE];
	put_le32(frame, (uint32_t)len);
	put_le32(frame + 4, crc32_compute(rec, len));
	struct iovec iov[2] = {{frame, FRAME_SIZE}, {(void *)rec, len}};
	size_t total = FRAME_SIZE + len;

	flock(st->journalfd, LOCK_EX);
	ssize_t n = writev(st->journalfd, iov, 2);
	int rc = 0;
	if (n != (ssize_t)total) {
		rc = n < 0 ? -errno : -ENOSPC;
		/* Cut a partial frame back off, so the next append is not behind it. */
		if (ftruncate(st->journalfd, (off_t)st->journal_bytes) < 0)
			rc = -EIO;
	} else {
		st->journal_bytes += total;
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
	st->snapfd = openat(st->dirfd, "snapshot.tmp",
			    O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (st->snapfd < 0)
		return -errno;
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
	int rc = buf_ok(&st->snapbuf) ? snap_flush(st) : -ENOMEM;
	if (rc == 0 && close(st->snapfd) < 0)
		rc = -errno;
	st->snapfd = -1;
	buf_free(&st->snapbuf);
	int jfd = rc == 0 ? prepare_journal(st, st->generation + 1) : -1;
	if (rc == 0 && jfd < 0)
		rc = jfd;
	if (rc == 0 && renameat(st->dirfd, "snapshot.tmp", st->dirfd, "snapshot") < 0)
		rc = -errno;
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
	use_journal(st, jfd, st->generation + 1);
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

/*
 * nullfs — the "FUSE floor" for `make bench`.
 *
 * A low-level FUSE file system that answers every request at once and keeps
 * nothing: the root directory is empty, LOOKUP of any name is ENOENT (not
 * cached), CREATE hands out a fresh inode with zero timeouts and direct_io
 * (as busfs does for outbox/B), WRITE accepts every byte, FLUSH and RELEASE
 * succeed.  What a client measures against it is the cost of the kernel <->
 * daemon round trips alone, i.e. the best any FUSE server could do with the
 * same request sequence.
 *
 * One exception, for read workloads: the name "blob-SIZE" (SIZE in decimal
 * bytes, no leading '+' or spaces) in the root is a read-only file of SIZE
 * bytes.  Nothing is stored: SIZE is carried in the inode number, and READ
 * replies with a slice of one constant buffer filled at start.  Like busfs's
 * generated documents (health/status), the entry is cached (1 h), the
 * attributes are not (timeout 0) and opens use direct_io, so every read()
 * reaches the daemon, end-of-file included.
 *
 *     nullfs [-f] [--mt] [-d] [-o opt,...] MOUNTPOINT
 *
 * --mt uses fuse_session_loop_mt (default pool) instead of the single-threaded
 * fuse_session_loop.  SIGTERM/SIGINT unmount and exit 0.
 */
#define _GNU_SOURCE
#define FUSE_USE_VERSION 312

#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static _Atomic fuse_ino_t next_ino = 2;
static struct timespec start_time;

/* blob-SIZE files: inode BLOB_INO + SIZE.  CREATE's counter never gets near it. */
#define BLOB_INO ((fuse_ino_t)1 << 48)
#define BLOB_MAX_SIZE (((fuse_ino_t)1 << 40) - 1)
/* Replies come from this buffer; one READ never asks for more than max_pages
 * (at most 256) pages, i.e. 1 MiB, and a larger request would get a short reply. */
static char blob_data[1 << 20];

/* The "sink" file: below the blobs, far above CREATE's counter. */
#define SINK_INO ((fuse_ino_t)1 << 47)

static int is_blob(fuse_ino_t ino)
{
	return ino >= BLOB_INO && ino - BLOB_INO <= BLOB_MAX_SIZE;
}

static void fill_attr(fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof *st);
	st->st_ino = ino;
	st->st_uid = getuid();
	st->st_gid = getgid();
	st->st_atim = st->st_mtim = st->st_ctim = start_time;
	st->st_blksize = 4096;
	if (ino == FUSE_ROOT_ID) {
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2;
	} else if (is_blob(ino)) {
		st->st_mode = S_IFREG | 0444;
		st->st_nlink = 1;
		st->st_size = (off_t)(ino - BLOB_INO);
		st->st_blocks = (st->st_size + 511) / 512;
	} else if (ino == SINK_INO) {
		st->st_mode = S_IFREG | 0666;
		st->st_nlink = 1;
	} else {
		st->st_mode = S_IFREG | 0644;
		st->st_nlink = 1;
	}
}

static void nl_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	/* Like busfs: no writeback cache, no kernel-side merging of writes. */
	conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
}

static void nl_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	if (parent == FUSE_ROOT_ID && strncmp(name, "blob-", 5) == 0 && name[5] >= '0' &&
	    name[5] <= '9') {
		char *end;
		errno = 0;
		unsigned long long size = strtoull(name + 5, &end, 10);
		if (!errno && *end == '\0' && size <= BLOB_MAX_SIZE) {
			struct fuse_entry_param e;
			memset(&e, 0, sizeof e);
			e.ino = BLOB_INO + (fuse_ino_t)size;
			e.generation = 1;
			e.entry_timeout = 3600.0;
			e.attr_timeout = 0.0;
			fill_attr(e.ino, &e.attr);
			fuse_reply_entry(req, &e);
			return;
		}
	}
	if (parent == FUSE_ROOT_ID && strcmp(name, "sink") == 0) {
		struct fuse_entry_param e;
		memset(&e, 0, sizeof e);
		e.ino = SINK_INO;
		e.generation = 1;
		e.entry_timeout = 3600.0;
		e.attr_timeout = 0.0;
		fill_attr(e.ino, &e.attr);
		fuse_reply_entry(req, &e);
		return;
	}
	/* A plain error reply leaves no negative dentry in the kernel. */
	fuse_reply_err(req, ENOENT);
}

static void nl_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)fi;
	struct stat st;
	fill_attr(ino, &st);
	fuse_reply_attr(req, &st, 0.0);
}

static void nl_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
		       int to_set, struct fuse_file_info *fi)
{
	(void)attr;
	(void)to_set;
	(void)fi;
	struct stat st;
	fill_attr(ino, &st);
	fuse_reply_attr(req, &st, 0.0);
}

static void nl_create(fuse_req_t req, fuse_ino_t parent, const char *name,
		      mode_t mode, struct fuse_file_info *fi)
{
	(void)name;
	(void)mode;
	if (parent != FUSE_ROOT_ID) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	struct fuse_entry_param e;
	memset(&e, 0, sizeof e);
	e.ino = atomic_fetch_add(&next_ino, 1);
	e.generation = 1;
	e.attr_timeout = 0.0;
	e.entry_timeout = 0.0;
	fill_attr(e.ino, &e.attr);
	fi->direct_io = 1;
	fi->fh = 0;
	fuse_reply_create(req, &e, fi);
}

static void nl_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (ino == FUSE_ROOT_ID) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	if (is_blob(ino) && (fi->flags & O_ACCMODE) != O_RDONLY) {
		fuse_reply_err(req, EACCES);
		return;
	}
	fi->direct_io = 1;
	fuse_reply_open(req, fi);
}

static void nl_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	(void)fi;
	size_t len = 0;
	if (is_blob(ino) && off >= 0 && (uint64_t)off < ino - BLOB_INO) {
		uint64_t left = ino - BLOB_INO - (uint64_t)off;
		len = left < size ? (size_t)left : size;
		if (len > sizeof blob_data)
			len = sizeof blob_data;
	}
	fuse_reply_buf(req, len ? blob_data : NULL, len);
}

static void nl_write(fuse_req_t req, fuse_ino_t ino, const char *buf,
		     size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)ino;
	(void)buf;
	(void)off;
	(void)fi;
	fuse_reply_write(req, size);
}

static void nl_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

static void nl_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

static void nl_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	(void)ino;
	(void)nlookup;
	fuse_reply_none(req);
}

static void nl_forget_multi(fuse_req_t req, size_t count,
			    struct fuse_forget_data *forgets)
{
	(void)count;
	(void)forgets;
	fuse_reply_none(req);
}

static void nl_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (ino != FUSE_ROOT_ID) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	fuse_reply_open(req, fi);
}

static void nl_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	(void)fi;
	char buf[512];
	size_t len = 0;
	struct stat st;
	memset(&st, 0, sizeof st);
	st.st_mode = S_IFDIR;
	if (size > sizeof buf)
		size = sizeof buf;
	if (off < 1) {
		st.st_ino = ino;
		len += fuse_add_direntry(req, buf + len, size - len, ".", &st, 1);
	}
	if (off < 2) {
		st.st_ino = FUSE_ROOT_ID;
		size_t n = fuse_add_direntry(req, buf + len, size - len, "..", &st, 2);
		if (len + n <= size)
			len += n;
	}
	fuse_reply_buf(req, buf, len);
}

static void nl_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

static const struct fuse_lowlevel_ops nl_ops = {
	.init = nl_init,
	.lookup = nl_lookup,
	.forget = nl_forget,
	.forget_multi = nl_forget_multi,
	.getattr = nl_getattr,
	.setattr = nl_setattr,
	.create = nl_create,
	.open = nl_open,
	.read = nl_read,
	.write = nl_write,
	.flush = nl_flush,
	.release = nl_release,
	.opendir = nl_opendir,
	.readdir = nl_readdir,
	.releasedir = nl_releasedir,
};

int main(int argc, char *argv[])
{
	int mt = 0;
	/* Strip our own option before libfuse sees the command line. */
	int n = 0;
	for (int i = 0; i < argc; i++) {
		if (i > 0 && strcmp(argv[i], "--mt") == 0)
			mt = 1;
		else
			argv[n++] = argv[i];
	}
	argv[n] = NULL;
	argc = n;

	clock_gettime(CLOCK_REALTIME, &start_time);
	/* blob-SIZE content: printable text, 63 letters and a newline per line. */
	for (size_t k = 0; k < sizeof blob_data; k++)
		blob_data[k] = k % 64 == 63 ? '\n' : (char)('a' + k % 26);

	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts opts;
	int ret = 1;

	if (fuse_parse_cmdline(&args, &opts) != 0)
		return 1;
	if (opts.show_help) {
		printf("usage: %s [-f] [--mt] [-d] [-o opt,...] MOUNTPOINT\n\n", argv[0]);
		fuse_cmdline_help();
		fuse_lowlevel_help();
		ret = 0;
		goto out1;
	}
	if (opts.show_version) {
		printf("nullfs (FUSE library %s)\n", fuse_pkgversion());
		ret = 0;
		goto out1;
	}
	if (opts.mountpoint == NULL) {
		fprintf(stderr, "usage: %s [-f] [--mt] [-d] [-o opt,...] MOUNTPOINT\n", argv[0]);
		goto out1;
	}

	struct fuse_session *se = fuse_session_new(&args, &nl_ops, sizeof nl_ops, NULL);
	if (se == NULL)
		goto out1;
	if (fuse_set_signal_handlers(se) != 0)
		goto out2;
	if (fuse_session_mount(se, opts.mountpoint) != 0)
		goto out3;
	fuse_daemonize(opts.foreground);

	if (mt) {
		struct fuse_loop_config *cfg = fuse_loop_cfg_create();
		if (cfg == NULL) {
			fprintf(stderr, "nullfs: fuse_loop_cfg_create failed\n");
			ret = 1;
		} else {
			fuse_loop_cfg_set_clone_fd(cfg, opts.clone_fd);
			ret = fuse_session_loop_mt(se, cfg);
			fuse_loop_cfg_destroy(cfg);
		}
	} else {
		ret = fuse_session_loop(se);
	}

	fuse_session_unmount(se);
out3:
	fuse_remove_signal_handlers(se);
out2:
	fuse_session_destroy(se);
out1:
	free(opts.mountpoint);
	fuse_opt_free_args(&args);
	/* fuse_session_loop returns the signal number after SIGTERM; that is a clean stop. */
	return ret < 0 ? 1 : 0;
}

/* main.c — the busfs command: options, the store, the mount, signals, the loop.
 *
 * Start-up order matters: open the store (its lock refuses a second server), mount,
 * daemonize (fork) before any thread exists, write the pid, start the notifier with
 * signals blocked so SIGTERM lands on the dispatch thread, then run the loop. The
 * clean stop is SIGTERM/SIGINT: parked readers get end-of-file, the mount goes, the
 * store is compacted, exit 0. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "busfs/clock.h"
#include "cluster.h"
#include "fs.h"

#define FUSE_SUPER_MAGIC 0x65735546

static void usage(FILE *out)
{
	fprintf(out,
		"Usage: busfs [--store DIR] [options] MOUNTPOINT\n"
		"       busfs --check --store DIR\n"
		"       busfs --salvage --store DIR\n"
		"\n"
		"A message bus for agents, as files. Agents register with mkdir, send by writing\n"
		"files, and wait for messages by reading agents/NAME/next.\n"
		"\n"
		"Options:\n"
		"  --store DIR                the store (default /dev/shm/busfs-UID); created if missing\n"
		"  --inbox-capacity N         messages an inbox holds before senders get EAGAIN (1000)\n"
		"  --max-message-size BYTES   larger messages get EFBIG (1M)\n"
		"  --store-max-bytes BYTES    sends get ENOSPC beyond this (half the free space)\n"
		"                             BYTES may end in K, M or G (powers of 1024)\n"
		"  --max-agents-per-uid N     agents one uid may register; then mkdir gets\n"
		"                             EDQUOT (1000); the server's own uid has no quotas\n"
		"  --max-bytes-per-uid BYTES  pending and unfinished messages from one uid's\n"
		"                             agents; then EDQUOT (a quarter of --store-max-bytes)\n"
		"  --max-drafts-per-sender N  unfinished messages one uid may hold open to one\n"
		"                             inbox; then EAGAIN at open (64)\n"
		"  --health-ttl SECONDS       an agent without a report or heartbeat for this long\n"
		"                             is stale (30)\n"
		"  --summary-window SECONDS   what summary.json, busfs.prom quantiles and alert\n"
		"                             rules look at (60)\n"
		"  --metrics-retention SECONDS  metric points older than this are dropped (3600),\n"
		"                             and series with no point since then are freed\n"
		"  --max-series N             distinct metric series (metric, agent, unit); a point\n"
		"                             that would start one more gets ENOSPC (10000)\n"
		"  --alert-interval SECONDS   how often alert rules are evaluated (5)\n"
		"                             SECONDS may have a fraction (0.5)\n"
		"  --lease SECONDS            how long a claim holds its message before it is\n"
		"                             pending again (60); extend renews it\n"
		"  --max-deliver N            a message whose N-th lease ends without an ack\n"
		"                             becomes a dead letter in dead/ (5)\n"
		"  --message-ttl SECONDS      a pending message older than this becomes a dead\n"
		"                             letter; a send record's ttl_s overrides it (0: none)\n"
		"  --events-retention N       the events log keeps at least the newest N (100000)\n"
		"  --dedupe-window SECONDS    a send record whose idempotency_key its sender used\n"
		"                             this recently is accepted, not delivered again (120)\n"
		"  --cluster URLS             join the bus across hosts on NATS JetStream:\n"
		"                             nats://HOST:PORT[,nats://...] (needs --node)\n"
		"  --node NAME                this node's name in the cluster; its agents are\n"
		"                             NAME@NODE on the others ([A-Za-z][A-Za-z0-9_-]*)\n"
		"  --cluster-replicas N       replicas of the stream and KV buckets (3)\n"
		"  --cluster-timeout SECONDS  a send to another node fails with ETIMEDOUT when\n"
		"                             JetStream has not stored it in this time (5)\n"
		"  --sync, --no-sync          a commit is answered once its journal bytes are on\n"
		"                             stable storage (fdatasync, shared by the commits\n"
		"                             made meanwhile): sends survive a power cut (on for\n"
		"                             a store on a disk, off on tmpfs)\n"
		"  --check                    verify the store offline; exit 0 when consistent,\n"
		"                             2 when it is damaged or holds a non-regular file\n"
		"  --salvage                  rebuild a damaged store from its intact records; the\n"
		"                             damaged files move to DIR/damaged-TIMESTAMP/\n"
		"  --clear-stale              unmount a stale mount left at MOUNTPOINT by a killed server\n"
		"  -f, --foreground           stay in the foreground, log to stderr\n"
		"  -d, --debug                log every FUSE request (implies -f)\n"
		"  --log-level LEVEL          error, warning, info (default: every refused\n"
		"                             operation) or debug; to stderr with -f, else syslog\n"
		"  -v, --verbose              the same as --log-level debug\n"
		"  -o OPT[,OPT...]            FUSE mount options (allow_other, ...)\n"
		"  -h, --help                 this help\n"
		"  -V, --version              the version\n"
		"\n"
		"Stop it with SIGTERM or Ctrl-C (parked readers get end-of-file), or with\n"
		"`fusermount3 -u MOUNTPOINT` when no file is open.\n");
}

/* --sync's default: on for a store on a disk, off on tmpfs and ramfs (memory, gone at
 * reboot anyway) and where the filesystem cannot be told. */
static bool store_on_disk(const char *dir)
{
	struct statfs sf;
	if (statfs(dir, &sf) < 0)
		return true;
	return sf.f_type != 0x01021994 /* TMPFS_MAGIC */ && sf.f_type != 0x858458f6 /* RAMFS */;
}

/* After SIGTERM: parked readers have their end-of-file; keep answering for a moment
 * so their close() (FLUSH, RELEASE) succeeds instead of meeting a dead mount. */
static void serve_until_closed(struct fs *fs, double grace_s)
{
	struct fuse_buf fbuf = {.mem = NULL};
	double deadline = bus_clock_monotonic() + grace_s;
	fuse_session_reset(fs->se);
	while (fs->open_files > 0 && !fuse_session_exited(fs->se) &&
	       bus_clock_monotonic() < deadline) {
		struct pollfd p = {.fd = fuse_session_fd(fs->se), .events = POLLIN};
		if (poll(&p, 1, 50) <= 0)
			continue;
		int res = fuse_session_receive_buf(fs->se, &fbuf);
		if (res == -EINTR || res == -EAGAIN)
			continue;
		if (res <= 0)
			break;
		fuse_session_process_buf(fs->se, &fbuf);
	}
	free(fbuf.mem);
}

static int parse_count(const char *opt, const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	uint64_t mul = 1;
	if (*end == 'K' || *end == 'k') mul = 1024, end++;
	else if (*end == 'M' || *end == 'm') mul = 1024 * 1024, end++;
	else if (*end == 'G' || *end == 'g') mul = 1024ull * 1024 * 1024, end++;
	if (errno || end == s || *end || s[0] == '-' || v == 0 || v > UINT64_MAX / mul) {
		fprintf(stderr, "busfs: %s needs a positive number, not '%s'\n", opt, s);
		return -1;
	}
	*out = v * mul;
	return 0;
}

/* A positive, finite number of seconds; fractions are allowed (tests use 0.5). */
static int parse_seconds(const char *opt, const char *s, double *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || !(v > 0) || v > 1e9) {
		fprintf(stderr, "busfs: %s needs a positive number of seconds, not '%s'\n", opt, s);
		return -1;
	}
	*out = v;
	return 0;
}

/* ENOTCONN on the mountpoint means a server died without unmounting. statfs() is
 * asked because it always reaches the server, where stat() may be answered from the
 * kernel's attribute cache. */
static int check_mountpoint(const char *mnt, bool clear)
{
	struct statfs sf;
	struct stat st;
	if (statfs(mnt, &sf) == 0) {
		if (stat(mnt, &st) < 0 || !S_ISDIR(st.st_mode)) {
			fprintf(stderr, "busfs: %s is not a directory\n", mnt);
			return -1;
		}
		if (sf.f_type == FUSE_SUPER_MAGIC) {
			fprintf(stderr, "busfs: %s is already a FUSE mount served by a running server; "
				"stop that one first (or: fusermount3 -u %s)\n", mnt, mnt);
			return -1;
		}
		return 0;
	}
	if (errno != ENOTCONN) {
		fprintf(stderr, "busfs: cannot use mountpoint %s: %s\n", mnt, strerror(errno));
		return -1;
	}
	if (!clear) {
		fprintf(stderr, "busfs: %s is a stale mount left by a server that died "
			"(Transport endpoint is not connected).\n"
			"Clear it with:  fusermount3 -u %s   (or start busfs with --clear-stale)\n",
			mnt, mnt);
		return -1;
	}
	pid_t pid = fork();
	if (pid == 0) {
		execlp("fusermount3", "fusermount3", "-u", "-z", mnt, (char *)NULL);
		_exit(127);
	}
	int status = 0;
	if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) ||
	    WEXITSTATUS(status) != 0 || statfs(mnt, &sf) < 0) {
		fprintf(stderr, "busfs: could not clear the stale mount at %s; try: "
			"fusermount3 -u %s\n", mnt, mnt);
		return -1;
	}
	fprintf(stderr, "busfs: cleared a stale mount at %s\n", mnt);
	return 0;
}

/* Long options without a short form. */
enum {
	OPT_MAX_AGENTS_PER_UID = 0x5101,
	OPT_MAX_BYTES_PER_UID,
	OPT_MAX_DRAFTS_PER_SENDER,
	OPT_MAX_SERIES,
	OPT_LEASE,
	OPT_MAX_DELIVER,
	OPT_MESSAGE_TTL,
	OPT_DEDUPE_WINDOW,
	OPT_EVENTS_RETENTION,
	OPT_CLUSTER,
	OPT_NODE,
	OPT_CLUSTER_REPLICAS,
	OPT_CLUSTER_TIMEOUT,
	OPT_SYNC,
	OPT_NO_SYNC,
};

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"store", required_argument, NULL, 's'},
		{"inbox-capacity", required_argument, NULL, 'c'},
		{"max-message-size", required_argument, NULL, 'm'},
		{"store-max-bytes", required_argument, NULL, 'b'},
		{"max-agents-per-uid", required_argument, NULL, OPT_MAX_AGENTS_PER_UID},
		{"max-bytes-per-uid", required_argument, NULL, OPT_MAX_BYTES_PER_UID},
		{"max-drafts-per-sender", required_argument, NULL, OPT_MAX_DRAFTS_PER_SENDER},
		{"health-ttl", required_argument, NULL, 't'},
		{"summary-window", required_argument, NULL, 'W'},
		{"metrics-retention", required_argument, NULL, 'R'},
		{"max-series", required_argument, NULL, OPT_MAX_SERIES},
		{"alert-interval", required_argument, NULL, 'A'},
		{"lease", required_argument, NULL, OPT_LEASE},
		{"max-deliver", required_argument, NULL, OPT_MAX_DELIVER},
		{"message-ttl", required_argument, NULL, OPT_MESSAGE_TTL},
		{"dedupe-window", required_argument, NULL, OPT_DEDUPE_WINDOW},
		{"events-retention", required_argument, NULL, OPT_EVENTS_RETENTION},
		{"cluster", required_argument, NULL, OPT_CLUSTER},
		{"node", required_argument, NULL, OPT_NODE},
		{"cluster-replicas", required_argument, NULL, OPT_CLUSTER_REPLICAS},
		{"cluster-timeout", required_argument, NULL, OPT_CLUSTER_TIMEOUT},
		{"sync", no_argument, NULL, OPT_SYNC},
		{"no-sync", no_argument, NULL, OPT_NO_SYNC},
		{"check", no_argument, NULL, 'k'},
		{"salvage", no_argument, NULL, 'S'},
		{"clear-stale", no_argument, NULL, 'C'},
		{"foreground", no_argument, NULL, 'f'},
		{"debug", no_argument, NULL, 'd'},
		{"verbose", no_argument, NULL, 'v'},
		{"log-level", required_argument, NULL, 'L'},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{NULL, 0, NULL, 0},
	};
	char default_store[64];
	snprintf(default_store, sizeof default_store, "/dev/shm/busfs-%u", (unsigned)getuid());
	struct bus_config cfg = {.store_dir = default_store, .inbox_capacity = 1000,
				 .max_message_size = 1u << 20, .health_ttl_s = 30,
				 .summary_window_s = 60, .metrics_retention_s = 3600,
				 .alert_interval_s = 5, .lease_s = 60, .max_deliver = 5};
	bool check = false, salvage = false, clear_stale = false, foreground = false, debug = false;
	int sync_mode = -1; /* --sync 1, --no-sync 0, else by the store's filesystem */
	struct cluster_config ccfg = {.replicas = 3, .timeout_s = 5};
	const char *mount_opts[64];
	size_t nopts = 0;
	uint64_t v;
	int c;

	while ((c = getopt_long(argc, argv, "fdvhVo:", longopts, NULL)) != -1) {
		switch (c) {
		case 's': cfg.store_dir = optarg; break;
		case 'c':
			if (parse_count("--inbox-capacity", optarg, &v) < 0 || v > UINT32_MAX)
				return 1;
			cfg.inbox_capacity = (uint32_t)v;
			break;
		case 'm':
			if (parse_count("--max-message-size", optarg, &v) < 0)
				return 1;
			cfg.max_message_size = v;
			break;
		case 'b':
			if (parse_count("--store-max-bytes", optarg, &v) < 0)
				return 1;
			cfg.store_max_bytes = v;
			break;
		case OPT_MAX_AGENTS_PER_UID:
			if (parse_count("--max-agents-per-uid", optarg, &v) < 0 || v > UINT32_MAX)
				return 1;
			cfg.max_agents_per_uid = (uint32_t)v;
			break;
		case OPT_MAX_BYTES_PER_UID:
			if (parse_count("--max-bytes-per-uid", optarg, &v) < 0)
				return 1;
			cfg.max_bytes_per_uid = v;
			break;
		case OPT_MAX_DRAFTS_PER_SENDER:
			if (parse_count("--max-drafts-per-sender", optarg, &v) < 0 || v > UINT32_MAX)
				return 1;
			cfg.max_drafts_per_sender = (uint32_t)v;
			break;
		case 't':
			if (parse_seconds("--health-ttl", optarg, &cfg.health_ttl_s) < 0)
				return 1;
			break;
		case 'W':
			if (parse_seconds("--summary-window", optarg, &cfg.summary_window_s) < 0)
				return 1;
			break;
		case 'R':
			if (parse_seconds("--metrics-retention", optarg, &cfg.metrics_retention_s) < 0)
				return 1;
			break;
		case OPT_MAX_SERIES:
			if (parse_count("--max-series", optarg, &v) < 0 || v > UINT32_MAX)
				return 1;
			cfg.max_series = (uint32_t)v;
			break;
		case 'A':
			if (parse_seconds("--alert-interval", optarg, &cfg.alert_interval_s) < 0)
				return 1;
			break;
		case OPT_LEASE:
			if (parse_seconds("--lease", optarg, &cfg.lease_s) < 0 ||
			    cfg.lease_s > BUS_MAX_SECONDS) {
				fprintf(stderr, "busfs: --lease is at most %.0f seconds\n",
					BUS_MAX_SECONDS);
				return 1;
			}
			break;
		case OPT_EVENTS_RETENTION:
			if (parse_count("--events-retention", optarg, &v) < 0)
				return 1;
			cfg.events_retention = v;
			break;
		case OPT_DEDUPE_WINDOW:
			if (parse_seconds("--dedupe-window", optarg, &cfg.dedupe_window_s) < 0)
				return 1;
			break;
		case OPT_MAX_DELIVER:
			if (parse_count("--max-deliver", optarg, &v) < 0 || v > UINT32_MAX)
				return 1;
			cfg.max_deliver = (uint32_t)v;
			break;
		case OPT_MESSAGE_TTL:
			/* 0 turns the default ttl off. */
			if (strcmp(optarg, "0") != 0 &&
			    (parse_seconds("--message-ttl", optarg, &cfg.message_ttl_s) < 0 ||
			     cfg.message_ttl_s < 1 || cfg.message_ttl_s > BUS_MAX_SECONDS)) {
				fprintf(stderr, "busfs: --message-ttl is 0 (none) or 1 to %.0f seconds\n",
					BUS_MAX_SECONDS);
				return 1;
			}
			break;
		case OPT_CLUSTER:
			if (!cluster_urls_valid(optarg)) {
				fprintf(stderr, "busfs: --cluster wants nats://HOST:PORT[,nats://...] "
					"(1 to 16 servers), not '%s'\n", optarg);
				return 1;
			}
			ccfg.urls = optarg;
			break;
		case OPT_NODE:
			if (!cluster_node_valid(optarg)) {
				fprintf(stderr, "busfs: --node wants [A-Za-z][A-Za-z0-9_-]*, at most 32 "
					"bytes, not '%s'\n", optarg);
				return 1;
			}
			ccfg.node = optarg;
			break;
		case OPT_CLUSTER_REPLICAS:
			if (parse_count("--cluster-replicas", optarg, &v) < 0 || v > 5) {
				fprintf(stderr, "busfs: --cluster-replicas is 1 to 5\n");
				return 1;
			}
			ccfg.replicas = (int)v;
			break;
		case OPT_SYNC: sync_mode = 1; break;
		case OPT_NO_SYNC: sync_mode = 0; break;
		case OPT_CLUSTER_TIMEOUT:
			if (parse_seconds("--cluster-timeout", optarg, &ccfg.timeout_s) < 0 ||
			    ccfg.timeout_s > 3600) {
				fprintf(stderr, "busfs: --cluster-timeout is at most 3600 seconds\n");
				return 1;
			}
			break;
		case 'k': check = true; break;
		case 'S': salvage = true; break;
		case 'C': clear_stale = true; break;
		case 'f': foreground = true; break;
		case 'd': debug = foreground = true; break;
		case 'v': log_set_level(LOG_DEBUG); break;
		case 'L': {
			int prio = log_parse_level(optarg);
			if (prio < 0) {
				fprintf(stderr, "busfs: --log-level is error, warning, info or debug, "
					"not '%s'\n", optarg);
				return 1;
			}
			log_set_level(prio);
			break;
		}
		case 'h': usage(stdout); return 0;
		case 'V': printf("busfs %s (libfuse %s)\n", BUSFS_VERSION, fuse_pkgversion()); return 0;
		case 'o':
			if (nopts == sizeof mount_opts / sizeof mount_opts[0]) {
				fprintf(stderr, "busfs: too many -o options\n");
				return 1;
			}
			mount_opts[nopts++] = optarg;
			break;
		default:
			fprintf(stderr, "Try 'busfs --help'.\n");
			return 1;
		}
	}

	if (check) {
		struct buf report;
		buf_init(&report);
		int rc = bus_check_store(cfg.store_dir, &report);
		fputs(report.data ? report.data : "", rc == 0 ? stdout : stderr);
		buf_free(&report);
		return rc == 0 ? 0 : rc == -EBADMSG || rc == -EMEDIUMTYPE ? 2 : 1;
	}
	if (salvage) {
		struct buf report;
		buf_init(&report);
		int rc = bus_salvage_store(cfg.store_dir, &report);
		fputs(report.data ? report.data : "", rc == 0 ? stdout : stderr);
		buf_free(&report);
		return rc == 0 ? 0 : 1;
	}
	if (!ccfg.urls != !ccfg.node) {
		fprintf(stderr, "busfs: --cluster and --node go together\n");
		return 1;
	}
	if (optind != argc - 1) {
		fprintf(stderr, "busfs: %s\nTry 'busfs --help'.\n",
			optind >= argc ? "missing MOUNTPOINT" : "too many arguments");
		return 1;
	}
	const char *mountpoint = argv[optind];
	if (check_mountpoint(mountpoint, clear_stale) < 0)
		return 1;
	/* libfuse changes to / once mounted, so a relative mountpoint would not be found
	 * again at unmount: the mount would outlive the server. */
	char abs_mnt[PATH_MAX];
	if (!realpath(mountpoint, abs_mnt)) {
		fprintf(stderr, "busfs: cannot resolve mountpoint %s: %s\n", mountpoint,
			strerror(errno));
		return 1;
	}
	mountpoint = abs_mnt;
	/* The same for the store: some of its files are opened by path later. */
	char abs_store[PATH_MAX + 1];
	if (cfg.store_dir[0] != '/') {
		char cwd[PATH_MAX];
		if (!getcwd(cwd, sizeof cwd) ||
		    snprintf(abs_store, sizeof abs_store, "%s/%s", cwd, cfg.store_dir) >=
			    (int)sizeof abs_store) {
			fprintf(stderr, "busfs: cannot resolve store %s\n", cfg.store_dir);
			return 1;
		}
		cfg.store_dir = abs_store;
	}

	struct fs fs;
	memset(&fs, 0, sizeof fs);
	fs.mountpoint = mountpoint;
	fs.uid = getuid();
	fs.gid = getgid();
	waiters_init(&fs);
	struct bus_error err = {0};
	if (bus_open(&cfg, &fs.bus, &err) < 0) {
		if (err.code == EBADMSG)
			fprintf(stderr, "busfs: the store is damaged, not started: %s; keep every "
				"intact record with: busfs --salvage --store %s\n", err.reason,
				cfg.store_dir);
		else
			fprintf(stderr, "busfs: %s\n", err.reason);
		return 1;
	}
	bus_set_wake(fs.bus, waiters_wake, &fs);
	fs.sync.on = sync_mode >= 0 ? sync_mode == 1 : store_on_disk(cfg.store_dir);

	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	fuse_opt_add_arg(&args, argv[0]);
	for (size_t i = 0; i < nopts; i++) {
		fuse_opt_add_arg(&args, "-o");
		fuse_opt_add_arg(&args, mount_opts[i]);
	}
	fuse_opt_add_arg(&args, "-o");
	fuse_opt_add_arg(&args, "fsname=busfs,subtype=busfs");
	if (debug)
		fuse_opt_add_arg(&args, "-d");
	struct fuse_lowlevel_ops ops = busfs_make_ops();
	int status = 1;
	fs.se = fuse_session_new(&args, &ops, sizeof ops, &fs);
	if (!fs.se)
		goto out_bus;
	/* libfuse installs its stop handlers only where the disposition is the default,
	 * and an ignored one is inherited across exec (nohup, `trap '' INT`): reset them
	 * first, or such a start could never be stopped cleanly. */
	signal(SIGINT, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	signal(SIGHUP, SIG_DFL);
	if (fuse_set_signal_handlers(fs.se) != 0)
		goto out_session;
	if (fuse_session_mount(fs.se, mountpoint) != 0) {
		fprintf(stderr, "busfs: cannot mount at %s\n", mountpoint);
		goto out_signals;
	}
	if (syncer_install(&fs) != 0) {
		fprintf(stderr, "busfs: --sync: cannot take over the replies of the session\n");
		goto out_unmount;
	}
	if (fuse_daemonize(foreground) != 0)
		goto out_unmount;
	if (!foreground)
		log_use_syslog();
	bus_write_pid(fs.bus);
	if (waiters_start(&fs) < 0 || ticker_start(&fs, bus_config(fs.bus)->alert_interval_s) < 0 ||
	    syncer_start(&fs) < 0) {
		fprintf(stderr, "busfs: cannot start the notifier, ticker and syncer threads\n");
		goto out_unmount;
	}
	if (ccfg.urls) {
		ccfg.dedupe_window_s = bus_config(fs.bus)->dedupe_window_s;
		if (!(fs.cluster = cluster_start(fs.bus, &ccfg)))
			goto out_unmount;
	}
	log_msg(LOG_INFO, "serving %s from store %s (pid %ld)%s", mountpoint, cfg.store_dir,
		(long)getpid(), fs.sync.on ? ", --sync" : ", --no-sync");
	status = fuse_session_loop(fs.se) < 0 ? 1 : 0;
	log_msg(LOG_INFO, "stopping: readers get end-of-file, %s is unmounted", mountpoint);
	cluster_stop(fs.cluster);
	fs.cluster = NULL;
	ticker_stop(&fs);
	waiters_shutdown(&fs);
	serve_until_closed(&fs, 2.0);
out_unmount:
	syncer_stop(&fs); /* sends what it holds: the last replies */
	fuse_session_unmount(fs.se);
out_signals:
	fuse_remove_signal_handlers(fs.se);
out_session:
	fuse_session_destroy(fs.se);
	files_close_all(&fs);
out_bus:
	cluster_stop(fs.cluster);
	fs.cluster = NULL;
	ticker_stop(&fs);
	buf_free(&fs.cached_doc);
	bus_close(fs.bus);
	fuse_opt_free_args(&args);
	return status;
}

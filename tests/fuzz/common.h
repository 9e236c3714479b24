/*
 * common.h — shared helpers of the libFuzzer harnesses in tests/fuzz.
 *
 * The one thing a reader must know: a harness that needs a bus opens ONE bus per
 * process, on a fresh store under a private temp dir (/dev/shm, else /tmp; removed at
 * exit, and left-overs of crashed runs are reaped at the next start), with agents
 * alice, bob (uid FUZZ_UID) and carol (draining). After every input the harness puts
 * the bus back to "no pending message" (fuzz_settle), so an input's outcome depends
 * on the input only, and a crash reproduces when that input is run alone.
 *
 * Every invariant is checked with FUZZ_CHECK, which prints what failed and abort()s:
 * libFuzzer then saves the input as a crash.
 */
#ifndef BUSFS_FUZZ_COMMON_H
#define BUSFS_FUZZ_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "busfs/buf.h"
#include "busfs/bus.h"

#define FUZZ_UID 1000
#define FUZZ_OTHER_UID 2000

#define FUZZ_CHECK(cond, ...)                                                          \
	do {                                                                           \
		if (!(cond)) {                                                         \
			fprintf(stderr, "\nbusfs-fuzz: invariant failed at %s:%d: %s\n",   \
				__FILE__, __LINE__, #cond);                            \
			fprintf(stderr, "busfs-fuzz: " __VA_ARGS__);                   \
			fputc('\n', stderr);                                           \
			abort();                                                       \
		}                                                                      \
	} while (0)

/* A fresh private directory "<tmp>/busfs-fuzz-<tag>-<pid>-XXXXXX", removed at exit. */
const char *fuzz_tmpdir(const char *tag);
/* Removes a tree without following symlinks. */
void fuzz_rmtree(const char *path);
/* Writes a whole file (0600); aborts on failure. */
void fuzz_write_file(const char *path, const void *data, size_t len);

/* The shared bus of a harness. */
struct fuzz_world {
	struct bus *bus;
	char dir[4096];     /* the temp dir */
	char store[4200];   /* dir/store */
	uint64_t alice, bob, carol;
	unsigned long inputs;
	unsigned long reset_every;  /* set before init: a fresh store every N inputs (0: never) */
	uint64_t compacted_bytes;   /* store bytes after the last compaction */
};

/* Opens the bus (large --store-max-bytes) and creates the three agents. */
void fuzz_world_init(struct fuzz_world *w, const char *tag);
/* After an input: acks every pending message (as root) until none is left, checks the
 * invariants, and compacts the store every 256 inputs or 64 KiB of journal so it
 * cannot grow without bound
 * (and starts on a fresh store every reset_every inputs, for state that compaction
 * keeps, such as metric series and the outboxes' last 1000 messages). */
void fuzz_settle(struct fuzz_world *w);
/* bus_stats pending == the sum of the agents' inbox depths and leases; no agent holds a
 * reservation (no draft is open between inputs); every pending envelope is one
 * line of valid JSON whose msg_id and number agree. */
void fuzz_check_bus(struct bus *bus);
/* A read-only load of the store (bus_check_store, as `busfs --check` does) finds it
 * consistent and holding exactly what the live bus holds. */
void fuzz_check_recovery(struct fuzz_world *w);

/* What the FUSE layer does with a refusal (fs/files.c refuse()): bus_log_error, which
 * adds a line to `errors` and to the agent's own log. Checks that both logs' newest
 * line is one line of valid JSON (reasons quote the writer's bytes) whose "reason"
 * is the refusal's reason (as json_append_string writes it: UTF-8 text kept, any
 * other byte as U+FFFD). */
void fuzz_refused(struct fuzz_world *w, const char *op, const char *path, uid_t uid,
		  const struct bus_error *err);

/* Checks one envelope: one line, valid JSON (busfs's scanner, and jansson up to the
 * known differences), msg_id/number consistent. */
void fuzz_check_envelope(const struct bus_message *m);

/* json_is_value(p, len) is true; jansson must parse it too, except for the known
 * differences: lone surrogate escapes (\ud800), which busfs keeps as written and
 * jansson refuses; numbers beyond jansson's range (big integers, 1e999), which
 * busfs keeps byte for byte; and \u0000 in an object key, which jansson cannot
 * store even with JSON_ALLOW_NUL. Aborts on any other disagreement. */
void fuzz_check_jansson_agrees(const char *p, size_t len, const char *what);

/* The newest message of an agent's inbox (referenced), or NULL. */
struct bus_message *fuzz_newest(struct bus *bus, uint64_t agent_id);
/* The number of pending messages of an agent, and of the whole bus. */
uint32_t fuzz_depth(struct bus *bus, uint64_t agent_id);

/* The value of a top-level member of a valid JSON object, or NULL (len in *n). */
const char *fuzz_member(const char *obj, size_t len, const char *key, size_t *n);

#endif

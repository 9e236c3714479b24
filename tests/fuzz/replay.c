/*
 * replay.c — runs a libFuzzer harness over files without libFuzzer.
 *
 *   fuzz-replay-<harness> FILE|DIR...
 *
 * Linked with one tests/fuzz/fuzz_*.c harness and the core, built by the ordinary
 * compiler (and by `make asan` with the sanitizers), it calls LLVMFuzzerInitialize
 * once, then LLVMFuzzerTestOneInput once per file, in name order within a directory.
 * `make test` runs every harness over its seed corpus and the reproducers of the bugs
 * fuzzing found (tests/fuzz/crashes), so each of them stays a regression test without
 * clang. A broken invariant aborts, as under libFuzzer; the exit status is 0 when
 * every input ran.
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static int run_file(const char *path, unsigned long *count)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		fprintf(stderr, "fuzz-replay: %s: %s\n", path, strerror(errno));
		return -1;
	}
	size_t cap = 4096, len = 0;
	uint8_t *data = malloc(cap);
	size_t n;
	while (data && (n = fread(data + len, 1, cap - len, f)) > 0) {
		len += n;
		if (len == cap) {
			uint8_t *bigger = realloc(data, cap *= 2);
			if (!bigger)
				free(data);
			data = bigger;
		}
	}
	int bad = ferror(f);
	fclose(f);
	if (!data || bad) {
		fprintf(stderr, "fuzz-replay: %s: cannot read\n", path);
		free(data);
		return -1;
	}
	/* An exact-size copy, so that reading past the input is caught by ASan. */
	uint8_t *exact = malloc(len ? len : 1);
	if (!exact) {
		free(data);
		return -1;
	}
	memcpy(exact, data, len);
	free(data);
	LLVMFuzzerTestOneInput(exact, len);
	free(exact);
	(*count)++;
	return 0;
}

static int by_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int run_path(const char *path, unsigned long *count)
{
	struct stat st;
	if (stat(path, &st) != 0) {
		fprintf(stderr, "fuzz-replay: %s: %s\n", path, strerror(errno));
		return -1;
	}
	if (!S_ISDIR(st.st_mode))
		return run_file(path, count);
	DIR *d = opendir(path);
	if (!d) {
		fprintf(stderr, "fuzz-replay: %s: %s\n", path, strerror(errno));
		return -1;
	}
	char **names = NULL;
	size_t n = 0, cap = 0;
	int rc = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		if (n == cap) {
			char **more = realloc(names, (cap = cap ? cap * 2 : 64) * sizeof *names);
			if (!more) {
				rc = -1;
				break;
			}
			names = more;
		}
		if (!(names[n] = malloc(strlen(path) + strlen(e->d_name) + 2))) {
			rc = -1;
			break;
		}
		sprintf(names[n++], "%s/%s", path, e->d_name);
	}
	closedir(d);
	if (n)
		qsort(names, n, sizeof *names, by_name);
	for (size_t i = 0; i < n; i++) {
		if (rc == 0 && run_file(names[i], count) < 0)
			rc = -1;
		free(names[i]);
	}
	free(names);
	return rc;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
		return 2;
	}
	if (LLVMFuzzerInitialize)
		LLVMFuzzerInitialize(&argc, &argv);
	unsigned long count = 0;
	int rc = 0;
	for (int i = 1; i < argc; i++)
		if (run_path(argv[i], &count) < 0)
			rc = 1;
	const char *name = strrchr(argv[0], '/');
	printf("%s: %lu inputs replayed%s\n", name ? name + 1 : argv[0], count, rc ? ", some unreadable" : "");
	return rc;
}

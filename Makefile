# busfs — build, run, test, bench, install.
#
# `make run` and `make test` install the Debian packages they need when run as
# root (apt-get), and print the exact command otherwise.

CC       ?= cc
PREFIX   ?= /usr/local
DESTDIR  ?=
BUILD    ?= build
# The server binary; the sanitizer build keeps its own, so the two never mix.
BIN      ?= busfs
VERSION  := 0.1.0

PKGS      := fuse3 jansson libnats
# What building and running need; the suite also needs Criterion and the real
# Prometheus clients it checks busfs.prom with (promtool, node_exporter).
DEB_PKGS  := libfuse3-dev fuse3 libjansson-dev libnats-dev pkg-config jq
TEST_PKGS := libcriterion-dev prometheus prometheus-node-exporter nats-server
# The peers `make bench` measures busfs against (its own servers, ports and dirs).
BENCH_PKGS := redis-server redis-tools libhiredis-dev
WARN      := -Wall -Wextra -Wshadow -Wformat=2 -Wvla -Wno-unused-parameter
CFLAGS    ?= -O2 -g
CPPFLAGS  += -Iinclude -D_GNU_SOURCE -DBUSFS_VERSION='"$(VERSION)"'
ALL_CFLAGS = -std=c11 $(WARN) $(CFLAGS) $(SAN) -pthread \
             $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS_CORE = $(shell pkg-config --libs jansson 2>/dev/null) -pthread -lm
LDLIBS_FS   = $(shell pkg-config --libs fuse3 jansson libnats 2>/dev/null) -pthread -lm
LDLIBS_TEST = $(shell pkg-config --libs criterion 2>/dev/null)

CORE_SRC := $(wildcard core/*.c)
FS_SRC   := $(wildcard fs/*.c)
CORE_OBJ := $(CORE_SRC:%.c=$(BUILD)/%.o)
FS_OBJ   := $(FS_SRC:%.c=$(BUILD)/%.o)
UNIT_SRC := $(wildcard tests/unit/*.c) tests/runner.c
FST_SRC  := $(wildcard tests/fs/*.c) tests/runner.c

MNT ?= bus

.PHONY: all run test unit fstest asan bench clean install uninstall deps deps-test install-pkgs \
        reap format lint crash soak

all: $(BIN)

deps:
	@$(MAKE) --no-print-directory install-pkgs PKGS_WANTED="$(DEB_PKGS)"

deps-test:
	@$(MAKE) --no-print-directory install-pkgs PKGS_WANTED="$(DEB_PKGS) $(TEST_PKGS)"

install-pkgs:
	@missing=""; for p in $(PKGS_WANTED); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "busfs: installing$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing) >/dev/null || \
	      { echo "busfs: apt-get install$$missing failed"; exit 1; }; \
	  else \
	    echo "busfs: missing packages; run: sudo apt-get install$$missing"; exit 1; \
	  fi; \
	fi

$(BUILD)/%.o: %.c $(wildcard include/busfs/*.h core/*.h fs/*.h tests/fs/*.h tests/unit/*.h) | $(BUILD)/core $(BUILD)/fs $(BUILD)/tests/unit $(BUILD)/tests/fs
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) -c -o $@ $<

$(BUILD)/core $(BUILD)/fs $(BUILD)/tests/unit $(BUILD)/tests/fs:
	@mkdir -p $@

$(BUILD)/libbusfs.a: $(CORE_OBJ)
	ar rcs $@ $^

$(BIN): $(FS_OBJ) $(BUILD)/libbusfs.a
	$(CC) $(ALL_CFLAGS) -o $@ $(FS_OBJ) $(BUILD)/libbusfs.a $(LDLIBS_FS)

# The unit tests fail allocations on demand (tests/unit/failalloc.h).
WRAP_ALLOC := -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=strdup

$(BUILD)/unit-tests: $(UNIT_SRC:%.c=$(BUILD)/%.o) $(BUILD)/libbusfs.a
	$(CC) $(ALL_CFLAGS) $(WRAP_ALLOC) -o $@ $^ $(LDLIBS_CORE) $(LDLIBS_TEST)

$(BUILD)/fs-tests: $(FST_SRC:%.c=$(BUILD)/%.o) $(BUILD)/libbusfs.a
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS_CORE) $(LDLIBS_TEST)

# Every libFuzzer harness (FUZZ_NAMES, which `make fuzz` runs too), linked with
# tests/fuzz/replay.c instead of libFuzzer, runs over its seed corpus and the
# reproducers in tests/fuzz/crashes in `make test`.
FUZZ_NAMES   := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
REPLAY_BINS  := $(FUZZ_NAMES:%=$(BUILD)/fuzz-replay-%)
REPLAY_CMD    = for h in $(FUZZ_NAMES); do \
	  $(BUILD)/fuzz-replay-$$h tests/fuzz/corpus/$$h $$([ -d tests/fuzz/crashes/$$h ] && echo tests/fuzz/crashes/$$h) \
	    || { echo "fuzz-replay-$$h: FAILED"; exit 1; }; done

$(BUILD)/tests/fuzz:
	@mkdir -p $@

$(BUILD)/tests/fuzz/%.o: tests/fuzz/%.c tests/fuzz/common.h $(wildcard include/busfs/*.h core/*.h) | $(BUILD)/tests/fuzz
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) -c -o $@ $<

$(BUILD)/fuzz-replay-%: $(BUILD)/tests/fuzz/fuzz_%.o $(BUILD)/tests/fuzz/replay.o $(BUILD)/tests/fuzz/common.o $(BUILD)/libbusfs.a
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS_CORE)

run: deps
	@$(MAKE) --no-print-directory busfs
	@mkdir -p $(MNT)
	@echo "busfs: mounting the bus at ./$(MNT) (store /dev/shm/busfs-$$(id -u)); Ctrl-C unmounts."
	@echo "  in another shell:  mkdir $(MNT)/agents/alice $(MNT)/agents/bob"
	@echo "                     echo 'build finished' > $(MNT)/agents/alice/outbox/bob"
	@echo "                     cat $(MNT)/agents/bob/next"
	@echo "                     cat $(MNT)/README"
	./busfs -f $(MNT)

# Leftover mounts and servers of an interrupted test run are reaped before and after.
reap:
	@grep -o -E ' [^ ]*busfs-(test|crash)[^ ]* fuse' /proc/self/mountinfo 2>/dev/null | awk '{print $$1}' | \
	  while read -r m; do fusermount3 -uz "$$m" 2>/dev/null || umount -l "$$m" 2>/dev/null; done; true

unit: $(BUILD)/unit-tests
	$(BUILD)/unit-tests

fstest: $(BIN) $(BUILD)/fs-tests
	BUSFS_BIN=$(CURDIR)/$(BIN) $(BUILD)/fs-tests

test: deps-test
	@$(MAKE) --no-print-directory reap
	@$(MAKE) --no-print-directory $(BIN) $(BUILD)/unit-tests $(BUILD)/fs-tests $(REPLAY_BINS)
	@$(if $(SAN),,$(MAKE) --no-print-directory $(BUILD)/crashloop)
	@rc=0; tests/phase "unit tests (core, no mount)" $(BUILD)/unit-tests || rc=1; \
	  tests/phase "fuzz corpus and crash reproducers" sh -c '$(REPLAY_CMD)' || rc=1; \
	  BUSFS_BIN=$(CURDIR)/$(BIN) tests/phase "real-mount tests" $(BUILD)/fs-tests \
	    --filter '!(cluster)/*' || rc=1; \
	  BUSFS_BIN=$(CURDIR)/$(BIN) tests/phase "cluster tests (3 nats-servers, 3 mounts)" \
	    $(BUILD)/fs-tests -j1 --filter 'cluster/*' || rc=1; \
	  $(if $(SAN),,tests/phase "crash loop (kill -9 under writers)" $(CRASH_SHORT) || rc=1;) \
	  $(MAKE) --no-print-directory reap; exit $$rc

# AddressSanitizer + UndefinedBehaviorSanitizer build in its own directory.
asan:
	$(MAKE) BUILD=build-asan BIN=build-asan/busfs SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" CFLAGS="-O1 -g" test

bench: deps-test
	@$(MAKE) --no-print-directory install-pkgs PKGS_WANTED="$(BENCH_PKGS)"
	@$(MAKE) --no-print-directory busfs
	@$(MAKE) --no-print-directory -C tests/bench BUSFS=$(CURDIR)/busfs

format:
	clang-format -i core/*.c fs/*.c include/busfs/*.h tests/*.c tests/*/*.c

# Fails (exit 1) when cppcheck reports anything.
lint:
	cppcheck --quiet --error-exitcode=1 --inline-suppr --enable=warning,performance,portability \
	  --std=c11 -D_GNU_SOURCE -Iinclude core fs

# `make install` builds $(BIN) and installs it as bin/busfs, with busfs(8) and the
# docs (README.md, examples/: scripts 0755, the rest 0644) under share/.
# `make uninstall` removes exactly those files, then the doc directories if empty.
install: $(BIN)
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/busfs
	install -D -m 0644 fs/busfs.8 $(DESTDIR)$(PREFIX)/share/man/man8/busfs.8
	install -d $(DESTDIR)$(PREFIX)/share/doc/busfs/examples
	install -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/busfs/README.md
	@for f in examples/*; do \
	  [ -f "$$f" ] || continue; \
	  if [ -x "$$f" ]; then m=0755; else m=0644; fi; \
	  echo "install -m $$m $$f $(DESTDIR)$(PREFIX)/share/doc/busfs/$$f"; \
	  install -m $$m "$$f" "$(DESTDIR)$(PREFIX)/share/doc/busfs/$$f" || exit 1; \
	done

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/busfs $(DESTDIR)$(PREFIX)/share/man/man8/busfs.8 \
	  $(DESTDIR)$(PREFIX)/share/doc/busfs/README.md \
	  $(addprefix $(DESTDIR)$(PREFIX)/share/doc/busfs/,$(wildcard examples/*))
	rmdir $(DESTDIR)$(PREFIX)/share/doc/busfs/examples $(DESTDIR)$(PREFIX)/share/doc/busfs \
	  2>/dev/null || true

# ---------- the crash loop (tests/crash) ----------
# Writers send and consumers claim and ack while busfs is kill -9'd and restarted
# on the same store; then every inbox, with what the consumers acked, must hold
# every recorded message exactly once, in sequence, no lease token may have been
# handed out twice, `events` must be gapless and `busfs --check` must pass.
# `make test` runs the short loop (about 30 s, 20 kills); `make soak` the long one
# (8 writers, 4 consumers, 1,000,000 messages, a kill every ~2 s).
CRASH_SRC   := $(wildcard tests/crash/*.c)
CRASH_SHORT  = $(BUILD)/crashloop --quiet --writers 4 --consumers 2 --kills 20 --interval 700 \
               --rate 5000 $(CURDIR)/$(BIN)

$(BUILD)/crashloop: $(CRASH_SRC) tests/crash/crashloop.h
	@mkdir -p $(BUILD)
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) -o $@ $(CRASH_SRC) $(LDLIBS_CORE)

crash: $(BIN) $(BUILD)/crashloop
	$(CRASH_SHORT)

soak: $(BIN) $(BUILD)/crashloop
	$(BUILD)/crashloop --writers 8 --consumers 4 --agents 10 --kills 100 --messages 1000000 \
	  --interval 2000 --rate 5000 $(CURDIR)/$(BIN)

# The fuzz corpus that earlier runs grew (build-fuzz/corpus) is kept.
clean:
	rm -rf build build-asan busfs
	@if [ -d $(FUZZ_BUILD) ]; then \
	  find $(FUZZ_BUILD) -mindepth 1 -maxdepth 1 ! -name corpus -exec rm -rf {} +; fi

# ---------- fuzzing: libFuzzer harnesses of every parser (tests/fuzz) ----------
# `make fuzz` builds tests/fuzz/fuzz_*.c with the core into build-fuzz/ (clang,
# libFuzzer, ASan, UBSan), runs each harness for FUZZ_SECONDS on a copy of its seed
# corpus (build-fuzz/corpus/<harness>, which keeps what earlier runs found), prints
# the executions per harness and fails if any harness crashed. Crash inputs and logs
# land in build-fuzz/artifacts/<harness>/ and build-fuzz/logs/<harness>.log.
FUZZ_SECONDS ?= 60
FUZZ_CC      ?= clang
FUZZ_BUILD   := build-fuzz
FUZZ_PKGS    := clang libclang-rt-14-dev libjansson-dev pkg-config
FUZZ_SAN     := -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
                -fno-omit-frame-pointer
FUZZ_CFLAGS   = -std=c11 $(WARN) -g -O1 $(FUZZ_SAN) -pthread \
                $(shell pkg-config --cflags jansson 2>/dev/null)
FUZZ_BINS    := $(FUZZ_NAMES:%=$(FUZZ_BUILD)/fuzz_%)
FUZZ_OBJ     := $(CORE_SRC:%.c=$(FUZZ_BUILD)/%.o) $(FUZZ_BUILD)/tests/fuzz/common.o

.PHONY: fuzz
# Objects of the harnesses are kept, so make does not delete (and print) them.
.SECONDARY:

fuzz:
	@$(MAKE) --no-print-directory install-pkgs PKGS_WANTED="$(FUZZ_PKGS)"
	@$(MAKE) --no-print-directory $(FUZZ_BINS)
	@rc=0; for h in $(FUZZ_NAMES); do \
	  mkdir -p $(FUZZ_BUILD)/corpus/$$h $(FUZZ_BUILD)/artifacts/$$h $(FUZZ_BUILD)/logs; \
	  cp tests/fuzz/corpus/$$h/* $(FUZZ_BUILD)/corpus/$$h/ 2>/dev/null; \
	  dict=; [ -f tests/fuzz/$$h.dict ] && dict=-dict=tests/fuzz/$$h.dict; \
	  log=$(FUZZ_BUILD)/logs/$$h.log; \
	  UBSAN_OPTIONS=print_stacktrace=1 ./$(FUZZ_BUILD)/fuzz_$$h -max_total_time=$(FUZZ_SECONDS) \
	    -print_final_stats=1 -timeout=30 -artifact_prefix=$(FUZZ_BUILD)/artifacts/$$h/ \
	    $$dict $(FUZZ_BUILD)/corpus/$$h >$$log 2>&1; st=$$?; \
	  execs=$$(sed -n 's/^stat::number_of_executed_units: *//p' $$log | tail -1); \
	  rate=$$(sed -n 's/^stat::average_exec_per_sec: *//p' $$log | tail -1); \
	  if [ $$st -eq 0 ]; then \
	    printf 'fuzz %-12s ok       %12s executions (%s exec/s)\n' $$h "$${execs:-?}" "$${rate:-?}"; \
	  else \
	    rc=1; \
	    printf 'fuzz %-12s CRASHED  %12s executions (%s exec/s), exit %s; see %s\n' \
	      $$h "$${execs:-?}" "$${rate:-?}" $$st $$log; \
	    grep -a -E 'busfs-fuzz: |runtime error|ERROR: |^SUMMARY|Test unit written to' $$log | sed 's/^/    /'; \
	  fi; \
	done; exit $$rc

$(FUZZ_BUILD)/%.o: %.c $(wildcard include/busfs/*.h core/*.h tests/fuzz/*.h)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(CPPFLAGS) $(FUZZ_CFLAGS) -c -o $@ $<

$(FUZZ_BINS): $(FUZZ_BUILD)/fuzz_%: $(FUZZ_BUILD)/tests/fuzz/fuzz_%.o $(FUZZ_OBJ)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $^ $(LDLIBS_CORE)

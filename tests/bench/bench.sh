#!/usr/bin/env bash
# busfs benchmark: one message per open+write+close, batched `send` writes, reading
# generated documents (health/status of BENCH_READ_AGENTS agents, one agent's health),
# metric points appended on an open fd, and reading metrics/summary.json and
# metrics/busfs.prom with BENCH_SUMMARY_POINTS points in the summary window, against
# the FUSE floor (nullfs), libfuse's passthrough_ll, and plain tmpfs.  Then: wake-up
# latency of a reader blocked on agents/B/next (against a reader blocked on an inotify
# fd over tmpfs), `echo x > outbox/B` as a whole shell process (against the same on
# nullfs, tmpfs and /dev/null), and a busfs's memory with BENCH_MEM_AGENTS x
# BENCH_MEM_PER pending messages and its start-up time recovering them, after a clean
# stop and after kill -9 (journal replay).
#
#   tests/bench/bench.sh [BUSFS_BINARY]        (normally run by `make bench`)
#
# Environment:
#   BENCH_N           max ops per round per target, outbox workloads  (20000)
#   BENCH_BATCH_N     max messages per round per target, batch         (50000)
#   BENCH_ROUNDS      interleaved rounds; the table shows medians      (5)
#   BENCH_ROUND_SECS  cap one round of one target at about this long,
#                     from a warm-up run's rate; 0 = always the full N (1.5)
#   BENCH_PROCS       writer processes of the parallel outbox workload (4)
#   BENCH_READ_N      max reads per round per target, read workloads   (2000)
#                     (one read = open(O_RDONLY) + read() with a 64 KiB
#                     buffer until end-of-file + close)
#   BENCH_READ_AGENTS agents registered, each with one health report,
#                     on the busfs whose health/status is read         (1000)
#   BENCH_METRIC_N    max points per round per target, metric append
#                     (one open(O_WRONLY|O_APPEND), points written 1 and
#                     100 lines per write(), close)                    (100000)
#   BENCH_SUMMARY_POINTS  points loaded (set-up, 1000 lines per write, over
#                     10 agents x 10 metrics) into a busfs with
#                     --summary-window 3600 before its summary.json and
#                     busfs.prom are read                              (1000000)
#   BENCH_SUMMARY_N   max reads per round per target of summary.json and
#                     busfs.prom (and their same-size stand-ins)       (500)
#   BENCH_WAKE_N      wake-up samples per round per target             (2000)
#                     (a reader blocked in read() of agents/carol/next, a
#                     sender's open(outbox/carol, O_CREAT|O_WRONLY) +
#                     write 200 B + close; latency = before the open() to
#                     the read() returning; the reader acks each message)
#   BENCH_SHELL_N     max spawns per round per target, shell workload  (500)
#                     (SHELL -c 'echo x > FILE' spawned and waited for)
#   BENCH_SHELL       the shell of the shell workload             (/bin/sh)
#   BENCH_MEM_AGENTS  agents of the memory and recovery busfs          (1000)
#   BENCH_MEM_PER     pending messages per agent there, loaded through
#                     `send`, 1000 records per write()                 (100)
#   BENCH_SKIP        workloads not to run, comma- or space-separated, of
#                     outbox batch wake shell reads append summary memory
#                     (for quick iterations; skipped rows say "not run") ('')
#   BENCH_TIMEOUT     seconds before one client run counts as hung,
#                     and a busfs start-up as failed                    (120)
#
# busfs is run from a copy taken at start, so that a rebuild of BUSFS during the
# run (e.g. `make asan` rewrites ./busfs) does not change the binary mid-way.
#
# Needs nullfs and client in ./out (the Makefile builds them), cc, pkg-config,
# fuse3 (fusermount3) and libfuse3-dev (for the passthrough_ll example).

set -u

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
OUTDIR="$HERE/out"
NULLFS="$OUTDIR/nullfs"
CLIENT="$OUTDIR/client"
BUSFS=${1:-${BUSFS:-}}

N=${BENCH_N:-20000}
BATCH_N=${BENCH_BATCH_N:-50000}
ROUNDS=${BENCH_ROUNDS:-5}
ROUND_SECS=${BENCH_ROUND_SECS:-1.5}
PROCS=${BENCH_PROCS:-4}
READ_N=${BENCH_READ_N:-2000}
READ_AGENTS=${BENCH_READ_AGENTS:-1000}
METRIC_N=${BENCH_METRIC_N:-100000}
SUM_POINTS=${BENCH_SUMMARY_POINTS:-1000000}
SUM_N=${BENCH_SUMMARY_N:-500}
TMO=${BENCH_TIMEOUT:-120}
WAKE_N=${BENCH_WAKE_N:-2000}
SHELL_N=${BENCH_SHELL_N:-500}
SHELL_BIN=${BENCH_SHELL:-/bin/sh}
MEM_AGENTS=${BENCH_MEM_AGENTS:-1000}
MEM_PER=${BENCH_MEM_PER:-100}
SKIP=" ${BENCH_SKIP:-} "
SKIP=${SKIP//,/ }
MEM_LINES=1000         # records per write() while loading the memory busfs
CONS_N=${BENCH_CONSUME_N:-5000} # messages per round of the consume workload
CONS_GOAL_X=1.3        # goal: claim + ack costs at most this x next + rm
WAKE_GOAL_X=1.2        # goal: wake-up p50 <= this x one send
WAKE_GOAL_P99_US=2000  # goal: wake-up p99
MEM_GOAL_MIB=64        # goal: RSS with MEM_AGENTS x MEM_PER pending messages
START_GOAL_MS=1000     # goal: start-up recovering them
BATCH_SIZES=(1 10 100 1000)
APPEND_SIZES=(1 100)   # metric lines per write(), metric append workload
SUM_AGENTS=10          # agents x SUM_METRICS metrics hold the summary workload's points
SUM_METRICS=10
SUM_LINES=1000         # lines per write() while loading them
SUM_GOAL_US=10000      # the goal for one read of summary.json
EXAMPLES=/usr/share/doc/libfuse3-dev/examples

for v in N BATCH_N ROUNDS PROCS READ_N READ_AGENTS METRIC_N SUM_POINTS SUM_N TMO WAKE_N SHELL_N \
	MEM_AGENTS MEM_PER; do
	case ${!v} in
	'' | *[!0-9]* | 0) echo "bench: $v must be a positive integer (got '${!v}')" >&2; exit 2 ;;
	esac
done

case $ROUND_SECS in
'' | *[!0-9.]* | *.*.*) echo "bench: BENCH_ROUND_SECS must be a number of seconds (got '$ROUND_SECS')" >&2; exit 2 ;;
esac

for w in $SKIP; do
	case $w in
	outbox | batch | wake | shell | reads | append | summary | memory | consume | cluster | durable | peers) ;;
	*) echo "bench: BENCH_SKIP: unknown workload '$w' (outbox batch wake shell reads append summary memory consume cluster durable peers)" >&2; exit 2 ;;
	esac
done
[ -x "$SHELL_BIN" ] || { echo "bench: BENCH_SHELL=$SHELL_BIN is not an executable" >&2; exit 2; }

log() { printf '%s\n' "$*" >&2; }
# skip WORKLOAD: true when BENCH_SKIP names it.
skip() { [[ $SKIP == *" $1 "* ]]; }

[ -x "$NULLFS" ] && [ -x "$CLIENT" ] || {
	log "bench: $NULLFS or $CLIENT missing; run 'make -C $HERE build'"
	exit 1
}

# ---------------------------------------------------------------- teardown
WORK=""
SHM=""
declare -A MNT=() PID=()
ORDER=()

is_mounted() { awk -v m="$1" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo; }

# A child that exited but was not reaped yet is a zombie: not alive.
alive() {
	local st
	st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
	[ -n "$st" ] && [ "${st%% *}" != Z ]
}

# wait_gone PID TENTHS: poll until PID is gone or a deadline passes.
wait_gone() {
	local i
	for ((i = 0; i < $2; i++)); do
		alive "$1" || return 0
		sleep 0.1
	done
	! alive "$1"
}

# stop_target NAME: fusermount3 -u, wait for the server to exit (TERM, then KILL, if it
# does not within 30 s); a server that crashes or fails on the way out is recorded in
# STOPFAIL, one that takes over 3 s in STOPSLOW.  (busfs compacts its store on the way
# out: about 5 s for the ~1M messages the batch workload leaves on a busy machine.)
declare -A STOPFAIL=() STOPSLOW=()
stop_target() {
	local name=$1 m=${MNT[$1]:-} p=${PID[$1]:-} rc sig="" t0 ms
	if [ -n "$m" ] && is_mounted "$m"; then
		fusermount3 -u "$m" 2>/dev/null
	fi
	if [ -n "$p" ]; then
		t0=$(date +%s%N)
		if wait_gone "$p" 300; then
			ms=$((($(date +%s%N) - t0) / 1000000))
			[ "$ms" -gt 3000 ] && STOPSLOW[$name]="took $((ms / 1000)).$((ms % 1000 / 100)) s to exit after fusermount3 -u"
		else
			sig=TERM
			kill -TERM "$p" 2>/dev/null
			wait_gone "$p" 50 || { sig=KILL; kill -KILL "$p" 2>/dev/null; }
		fi
		wait "$p" 2>/dev/null
		rc=$?
		if [ -n "$sig" ]; then
			STOPFAIL[$name]="did not exit after fusermount3 -u; needed SIG$sig"
		elif [ "$rc" -gt 128 ]; then
			STOPFAIL[$name]="died with signal $((rc - 128)) ($(kill -l $((rc - 128)) 2>/dev/null)) after fusermount3 -u"
		elif [ "$rc" -ne 0 ]; then
			STOPFAIL[$name]="exited with status $rc after fusermount3 -u"
		fi
		[ -n "${STOPFAIL[$name]:-}" ] && [ -s "$WORK/$name.log" ] &&
			STOPFAIL[$name]+="; log: $(tail -n 3 "$WORK/$name.log" | tr '\n' ' ')"
	fi
	if [ -n "$m" ] && is_mounted "$m"; then
		fusermount3 -uz "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
	fi
	if [ -n "$m" ] && is_mounted "$m"; then
		log "bench: could not unmount $m"
		return 1
	fi
	unset "PID[$name]"
	return 0
}

cleanup() {
	local ok=1 n
	trap - EXIT INT TERM HUP
	for n in "${ORDER[@]}"; do
		stop_target "$n" || ok=0
	done
	# Never remove a directory while something is still mounted inside it.
	if [ "$ok" = 1 ]; then
		[ -n "$WORK" ] && rm -rf "$WORK"
		[ -n "$SHM" ] && rm -rf "$SHM"
	else
		log "bench: left $WORK and $SHM in place (a mount could not be removed)"
	fi
}
trap cleanup EXIT
trap 'log "bench: interrupted"; exit 130' INT TERM HUP

WORK=$(mktemp -d /tmp/busfs-bench.XXXXXX) || exit 1
SHM=$(mktemp -d /dev/shm/busfs-bench.XXXXXX) || exit 1

# ---------------------------------------------------------------- machine
model=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -n1)
echo "busfs benchmark  $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine: $(nproc) CPUs, ${model:-unknown CPU}, kernel $(uname -r), libfuse $(pkg-config --modversion fuse3 2>/dev/null || echo '?')"
echo "settings: BENCH_N=$N BENCH_BATCH_N=$BATCH_N BENCH_ROUNDS=$ROUNDS BENCH_ROUND_SECS=$ROUND_SECS BENCH_PROCS=$PROCS"
echo "          BENCH_READ_N=$READ_N BENCH_READ_AGENTS=$READ_AGENTS"
echo "          BENCH_METRIC_N=$METRIC_N BENCH_SUMMARY_POINTS=$SUM_POINTS BENCH_SUMMARY_N=$SUM_N"
echo "          BENCH_WAKE_N=$WAKE_N BENCH_SHELL_N=$SHELL_N BENCH_SHELL=$SHELL_BIN"
echo "          BENCH_MEM_AGENTS=$MEM_AGENTS BENCH_MEM_PER=$MEM_PER BENCH_TIMEOUT=$TMO${BENCH_SKIP:+ BENCH_SKIP=$BENCH_SKIP}"
# Run a copy of busfs (see the top); say when it is a sanitizer build.
if [ -n "$BUSFS" ] && [ -x "$BUSFS" ] && [ -f "$BUSFS" ]; then
	if cp "$BUSFS" "$WORK/busfs" 2>/dev/null; then
		kind="plain build"
		grep -qa -e __asan_init -e __ubsan_handle -e __tsan_init "$WORK/busfs" &&
			kind="SANITIZER BUILD (ASan/UBSan/TSan): its figures are not representative"
		echo "busfs: $BUSFS, $kind (run from a copy)"
		BUSFS="$WORK/busfs"
	fi
fi
echo

# ---------------------------------------------------------------- targets
declare -A FAIL=()   # target -> why it is not measured

# start_target NAME MOUNTPOINT TIMEOUT_TENTHS COMMAND...: run a -f server, wait for mountinfo.
start_target() {
	local name=$1 m=$2 tenths=$3 i
	shift 3
	mkdir -p "$m"
	"$@" >"$WORK/$name.log" 2>&1 </dev/null &
	PID[$name]=$!
	MNT[$name]=$m
	ORDER+=("$name")
	for ((i = 0; i < tenths; i++)); do
		is_mounted "$m" && return 0
		if ! alive "${PID[$name]}"; then
			wait "${PID[$name]}" 2>/dev/null
			FAIL[$name]="server exited before mounting: $(tail -n 3 "$WORK/$name.log" | tr '\n' ' ')"
			return 1
		fi
		sleep 0.05
	done
	is_mounted "$m" && return 0
	FAIL[$name]="not mounted after $((tenths / 20)) s: $(tail -n 3 "$WORK/$name.log" | tr '\n' ' ')"
	stop_target "$name"
	return 1
}

declare -A OUTBOX=() BATCHF=() STATUSF=() HEALTHF=() APPENDF=() SUMMARYF=() PROMF=() SHELLF=()
declare -A WAKEARGS=()

# (a) nullfs, single-threaded loop — the FUSE floor
if start_target nullfs "$WORK/mnt-nullfs" 200 "$NULLFS" -f "$WORK/mnt-nullfs"; then
	OUTBOX[nullfs]="$WORK/mnt-nullfs/msg"
	APPENDF[nullfs]="$WORK/mnt-nullfs/sink"
	SHELLF[nullfs]="$WORK/mnt-nullfs/msg"
fi
# (b) nullfs, fuse_session_loop_mt
if start_target nullfs-mt "$WORK/mnt-nullfs-mt" 200 "$NULLFS" -f --mt "$WORK/mnt-nullfs-mt"; then
	OUTBOX[nullfs-mt]="$WORK/mnt-nullfs-mt/msg"
fi
# (c) libfuse's passthrough_ll over a tmpfs directory, built now from the installed example
build_passthrough() {
	local src="$EXAMPLES/passthrough_ll.c" hdr="$EXAMPLES/passthrough_helpers.h" inc="$EXAMPLES"
	if [ ! -f "$src" ] && [ -f "$src.gz" ]; then
		mkdir -p "$WORK/pt-src" && inc="$WORK/pt-src"
		zcat "$src.gz" >"$inc/passthrough_ll.c" || return 1
		src="$inc/passthrough_ll.c"
		if [ -f "$hdr" ]; then cp "$hdr" "$inc/"; elif [ -f "$hdr.gz" ]; then zcat "$hdr.gz" >"$inc/passthrough_helpers.h"; fi
	fi
	[ -f "$src" ] || { echo "$src not found (apt-get install libfuse3-dev)"; return 1; }
	# shellcheck disable=SC2046
	${CC:-cc} -O2 -Wall -I"$inc" -o "$WORK/passthrough_ll" "$src" \
		$(pkg-config --cflags --libs fuse3) -pthread 2>&1
}
if msg=$(build_passthrough); then
	mkdir -p "$SHM/pt-src"
	if start_target passthrough_ll "$WORK/mnt-pt" 200 \
		"$WORK/passthrough_ll" -f -o source="$SHM/pt-src" "$WORK/mnt-pt"; then
		OUTBOX[passthrough_ll]="$WORK/mnt-pt/msg"
		: >"$SHM/pt-src/metrics"
		APPENDF[passthrough_ll]="$WORK/mnt-pt/metrics"
	fi
else
	ORDER+=(passthrough_ll)
	FAIL[passthrough_ll]="build failed: $(printf '%s' "$msg" | tail -n 3 | tr '\n' ' ')"
fi
# (d) busfs
if [ -z "$BUSFS" ]; then
	ORDER+=(busfs)
	FAIL[busfs]="no busfs binary given"
elif [ ! -x "$BUSFS" ]; then
	ORDER+=(busfs)
	FAIL[busfs]="$BUSFS does not exist or is not executable (make busfs)"
elif start_target busfs "$WORK/mnt-busfs" 300 "$BUSFS" -f --store "$SHM/store" \
	--inbox-capacity 100000000 --store-max-bytes 4000000000 "$WORK/mnt-busfs"; then
	B="$WORK/mnt-busfs"
	if msg=$(mkdir "$B/agents/alice" "$B/agents/bob" "$B/agents/carol" 2>&1); then
		OUTBOX[busfs]="$B/agents/alice/outbox/bob"
		BATCHF[busfs]="$B/agents/alice/send"
		APPENDF[busfs]="$B/agents/alice/metrics"
		SHELLF[busfs]="$B/agents/alice/outbox/bob"
		WAKEARGS[busfs]="next $B/agents/carol/next $B/agents/alice/outbox/carol $B/agents/carol/ctl"
	else
		FAIL[busfs]="mounted, but registering agents failed: $msg"
	fi
fi
# (e) plain tmpfs
mkdir -p "$SHM/tmpfs"
OUTBOX[tmpfs]="$SHM/tmpfs/msg"
BATCHF[tmpfs]="$SHM/tmpfs/batch.jsonl"
: >"${BATCHF[tmpfs]}"
APPENDF[tmpfs]="$SHM/tmpfs/metrics"
: >"${APPENDF[tmpfs]}"
SHELLF[tmpfs]="$SHM/tmpfs/shellmsg"
mkdir -p "$SHM/tmpfs/wake"
WAKEARGS[tmpfs]="inotify $SHM/tmpfs/wake"
SHELLF[devnull]=/dev/null
ORDER+=(tmpfs)

TARGETS=(nullfs nullfs-mt passthrough_ll busfs tmpfs)
declare -A LABEL=(
	[nullfs]="nullfs (1 thread)"
	[nullfs-mt]="nullfs (--mt)"
	[passthrough_ll]="passthrough_ll/tmpfs"
	[busfs]="busfs"
	[busfs-read]="busfs"
	[busfs-sum]="busfs"
	[busfs-mem]="busfs"
	[tmpfs]="tmpfs"
	[devnull]="/dev/null (spawn only)"
)
# The read workloads: busfs-read is a second busfs, started for them (see below).
READ_TARGETS=(nullfs passthrough_ll busfs-read tmpfs)
# Metric append runs on the first busfs (agent alice); the summary reads on a third,
# busfs-sum, that holds SUM_POINTS points.
APPEND_TARGETS=(nullfs passthrough_ll busfs tmpfs)
SUM_TARGETS=(nullfs passthrough_ll busfs-sum tmpfs)
# Wake-up: busfs's next against inotify on tmpfs; shell: busfs against nullfs, tmpfs and
# /dev/null (the spawn alone).
WAKE_TARGETS=(busfs tmpfs)
SHELL_TARGETS=(nullfs busfs tmpfs devnull)

# ---------------------------------------------------------------- measuring
declare -A RATES=() COUNT=() BYTESR=() SLOWEST=()
ALLJOBS=()

# run_client JOB ARGS...: one client run; sets RATE (and BYTES, the bytes per read, and
# SLOW, the slowest read in us, of a read run; SECS, the seconds the client timed, of an
# append run), or records the failure in FAIL[JOB].
# (Not run in a $(...) subshell, so FAIL survives.)
RATE=""
BYTES=""
SLOW=""
SECS=""
OUT=""
run_client() {
	local job=$1 out rc
	shift
	RATE=""
	BYTES=""
	SLOW=""
	SECS=""
	out=$(timeout -k 5 "$TMO" "$CLIENT" "$@" 2>&1)
	rc=$?
	if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
		# A hung server would hang every later job too: give up on the whole target.
		FAIL[$job]="hung: no answer within ${TMO}s (BENCH_TIMEOUT)"
		FAIL[${job#*:}]="a client hung in $job"
		return 1
	elif [ $rc -ne 0 ]; then
		FAIL[$job]=$(printf '%s' "$out" | tail -n 2 | tr '\n' ' ')
		return 1
	fi
	RATE=$(printf '%s\n' "$out" | awk '/(msgs|reads|points|wakes)\/s/ { r = $1 } END { print r }')
	OUT=$out
	BYTES=$(printf '%s\n' "$out" | awk '/reads\/s/ { for (i = 2; i <= NF; i++)
		if ($i ~ /^bytes\/read/) b = $(i - 1) } END { print b }')
	SLOW=$(printf '%s\n' "$out" | awk '/reads\/s/ { for (i = 2; i < NF; i++)
		if ($i == "slowest") s = $(i + 1) } END { print s }')
	case $out in *points/s*) SECS=$(printf '%s\n' "$out" | awk '/points\/s/ { s = $5 } END { print s }') ;; esac
	if [ -z "$RATE" ]; then
		FAIL[$job]="unexpected client output: $out"
		return 1
	fi
}

# job_args JOB COUNT: the client command line of a job.
#   jobs: outbox1:T, outboxP:T, batchL:T, status:T, health:T, appendL:T, summary:T, prom:T
job_args() {
	local job=$1 n=$2 kind=${1%%:*} t=${1#*:}
	case $kind in
	outbox1) echo outbox "${OUTBOX[$t]}" "$n" ;;
	outboxP) echo outbox-procs "$PROCS" "${OUTBOX[$t]}" "$n" ;;
	batch*) echo batch "${BATCHF[$t]}" "${kind#batch}" "$n" ;;
	status) echo read "${STATUSF[$t]}" "$n" ;;
	health) echo read "${HEALTHF[$t]}" "$n" ;;
	append*) echo append "${APPENDF[$t]}" "${kind#append}" "$n" ;;
	summary) echo read "${SUMMARYF[$t]}" "$n" ;;
	prom) echo read "${PROMF[$t]}" "$n" ;;
	shell) echo shell "$SHELL_BIN" "${SHELLF[$t]}" "$n" ;;
	esac
}

# run_job JOB COUNT: sets RATE; a failing job stays failed.
run_job() {
	local job=$1 n=$2 t=${1#*:} args
	[ -n "${FAIL[$job]:-}" ] && return 1
	[ -n "${FAIL[$t]:-}" ] && return 1
	# shellcheck disable=SC2207
	args=($(job_args "$job" "$n"))
	case $job in
	batch*:tmpfs) : >"${BATCHF[tmpfs]}" ;;
	# The appended-to files start empty at every run (busfs's log of alice's points
	# keeps growing, as it does for a real agent).
	append*:tmpfs) : >"${APPENDF[tmpfs]}" ;;
	append*:passthrough_ll) : >"$SHM/pt-src/metrics" ;;
	esac
	run_client "$job" "${args[@]}"
}

# measure TITLE MAXN JOB...: a warm-up run of each job fixes its count (about ROUND_SECS
# long, at most MAXN), then ROUNDS rounds run the jobs interleaved A B C A B C ...
measure() {
	local title=$1 maxn=$2 job r n cal line l
	shift 2
	local jobs=("$@")
	ALLJOBS+=("$@")
	cal=$((maxn < 2000 ? maxn : 2000))
	for job in "${jobs[@]}"; do
		n=$cal
		# A warm-up of big batches needs more than a couple of writes.
		case $job in batch100:* | batch1000:* | append100:*) n=$((cal * 5 > maxn ? maxn : cal * 5)) ;; esac
		if run_job "$job" "$n"; then
			COUNT[$job]=$(awk -v r="$RATE" -v s="$ROUND_SECS" -v m="$maxn" 'BEGIN {
				n = (s > 0) ? int(r * s) : m; if (n < 1000) n = 1000; if (n > m) n = m; print n }')
			# Appends: whole writes only, so that us/write is exact.
			case $job in append*)
				l=${job%%:*} l=${l#append}
				[ "${COUNT[$job]}" -ge "$l" ] && COUNT[$job]=$((COUNT[$job] / l * l)) ;;
			esac
		fi
	done
	for ((r = 1; r <= ROUNDS; r++)); do
		line="$title round $r/$ROUNDS:"
		for job in "${jobs[@]}"; do
			if run_job "$job" "${COUNT[$job]:-$maxn}"; then
				RATES[$job]+="$RATE "
				[ -n "$BYTES" ] && BYTESR[$job]+="$BYTES "
				[ -n "$SLOW" ] && SLOWEST[$job]+="$SLOW "
				line+=" ${job#*:}=${RATE%.*}/s"
			else
				line+=" ${job#*:}=FAILED"
			fi
		done
		log "$line"
	done
}


jobs_for() { local k=$1 t; for t in "${TARGETS[@]}"; do echo "$k:$t"; done; }

T0=$(date +%s)
if ! skip outbox; then
	# shellcheck disable=SC2046
	measure "outbox 1 proc" "$N" $(jobs_for outbox1)
	# shellcheck disable=SC2046
	measure "outbox $PROCS procs" "$N" $(jobs_for outboxP)
fi
BATCH_JOBS=()
for l in "${BATCH_SIZES[@]}"; do BATCH_JOBS+=("batch$l:busfs" "batch$l:tmpfs"); done
skip batch || measure "batch" "$BATCH_N" "${BATCH_JOBS[@]}"

# Wake-up latency.  A reader process blocked in read() of agents/carol/next on the first
# busfs; the sender (the client itself) waits until the reader sleeps in that read(),
# takes CLOCK_MONOTONIC, and sends one message with open(outbox/carol,
# O_CREAT|O_WRONLY) + write(200 B) + close.  Latency: from that clock reading to the
# reader's read() returning (shared memory).  When the sender's close() has returned,
# the reader acks the message through agents/carol/ctl (`next` does not consume) and
# opens `next` again.  The reference: a reader blocked in read() of an inotify fd
# (IN_CLOSE_WRITE) on a tmpfs directory, the sender creating a file there, the reader
# unlinking it.  WAKE_N samples per round per target, rounds interleaved; the table
# shows percentiles of all the samples of all rounds.
declare -A WAKE_P50=() WAKE_P99=() WAKE_MAX=() WAKE_SEND=() WAKE_NS=()
# wake_stats FILE: "count p50 p99 max send-p50" (us, nearest rank) of a samples file.
wake_stats() {
	local n p50 p99 max send
	read -r n p50 p99 max < <(awk '{ print $1 }' "$1" | sort -g | awk '{ a[NR] = $1 } END {
		k50 = int(0.5 * NR + 0.999999); k99 = int(0.99 * NR + 0.999999)
		print NR, a[k50], a[k99], a[NR] }')
	send=$(awk '{ print $2 }' "$1" | sort -g | awk '{ a[NR] = $1 } END { print a[int(0.5 * NR + 0.999999)] }')
	echo "$n $p50 $p99 $max $send"
}
if ! skip wake; then
	for t in "${WAKE_TARGETS[@]}"; do
		ALLJOBS+=("wake:$t")
		rm -f "$WORK/wake-$t.samples"
		[ -n "${FAIL[$t]:-}" ] || [ -z "${WAKEARGS[$t]:-}" ] && continue
		# Warm-up, not recorded.
		# shellcheck disable=SC2086
		run_client "wake:$t" wake ${WAKEARGS[$t]} $((WAKE_N < 200 ? WAKE_N : 200))
	done
	for ((r = 1; r <= ROUNDS; r++)); do
		line="wake-up round $r/$ROUNDS:"
		for t in "${WAKE_TARGETS[@]}"; do
			[ -n "${FAIL[$t]:-}" ] || [ -n "${FAIL[wake:$t]:-}" ] || [ -z "${WAKEARGS[$t]:-}" ] && continue
			# shellcheck disable=SC2086
			if run_client "wake:$t" wake ${WAKEARGS[$t]} "$WAKE_N" "$WORK/wake-$t.samples"; then
				line+=" $t=$(printf '%s' "$OUT" | sed -n 's/.*(\(.*\)).*/\1/p' | cut -d, -f2-4)"
			else
				line+=" $t=FAILED"
			fi
		done
		log "$line"
	done
	for t in "${WAKE_TARGETS[@]}"; do
		[ -n "${FAIL[wake:$t]:-}" ] || [ ! -s "$WORK/wake-$t.samples" ] && continue
		read -r "WAKE_NS[$t]" "WAKE_P50[$t]" "WAKE_P99[$t]" "WAKE_MAX[$t]" "WAKE_SEND[$t]" < <(wake_stats "$WORK/wake-$t.samples")
	done
fi

# Shell path: one process per message, SHELL -c 'echo x > FILE' spawned with
# posix_spawn and waited for: outbox/bob of the first busfs, nullfs's msg, a tmpfs file,
# and /dev/null (the process alone).
# shellcheck disable=SC2046
skip shell || measure "shell echo" "$SHELL_N" $(for t in "${SHELL_TARGETS[@]}"; do echo "shell:$t"; done)

# Reads.  A busfs of its own, started now, so that its bus holds exactly READ_AGENTS
# agents (not alice and bob with their backlog) and every report is fresh: the reports
# are written just before the reads, and --health-ttl 3600 keeps any from going stale
# during them.  The set-up (mkdir, one health report each, copies) is not timed.
# tmpfs and passthrough_ll read a copy of the rendered document, nullfs its blob-SIZE
# file of the same size.
STATUS_BYTES="" HEALTH_BYTES="" SETUP_ERR="" READ_AGENT1="" SETUP_T0=0 SETUP_MS=0
# setup_reads ROOT: register and report; copy the documents. Sets STATUS_BYTES,
# HEALTH_BYTES, STATUSF/HEALTHF[busfs-read]; on failure returns 1 with SETUP_ERR set.
setup_reads() {
	local R=$1 i a w r msg
	local names=()
	w=${#READ_AGENTS}
	[ "$w" -lt 4 ] && w=4
	for ((i = 1; i <= READ_AGENTS; i++)); do
		printf -v a 'a%0*d' "$w" "$i"
		names+=("$a")
	done
	if ! msg=$(mkdir "${names[@]/#/$R/agents/}" 2>&1); then
		SETUP_ERR="mkdir agents/...: $(printf '%s' "$msg" | head -n 2 | tr '\n' ' ')"
		return 1
	fi
	# One write() each, from bash's builtin printf: no process per report.
	{
		for ((i = 1; i <= READ_AGENTS; i++)); do
			a=${names[i - 1]}
			case $((i % 3)) in
			1) r='healthy' ;;
			2) r='degraded disk 91% full' ;;
			0) r='{"status":"healthy","queue":17}' ;;
			esac
			printf '%s\n' "$r" >"$R/agents/$a/health" || break
		done
	} 2>"$WORK/read-setup.err"
	if [ "$i" -le "$READ_AGENTS" ]; then
		SETUP_ERR="health report of $a: $(tail -n 2 "$WORK/read-setup.err" | tr '\n' ' ')"
		return 1
	fi
	# Every document carries age_s (and health/status uptime_s), which gain a digit at
	# 10 s and at 100 s.  Wait until the last report is 10 s old: the copies taken then
	# have the size busfs serves during the reads (as long as they end within 100 s).
	SETUP_MS=$((($(date +%s%N) - SETUP_T0) / 1000000))
	sleep 10.3
	if ! cat "$R/health/status" >"$SHM/tmpfs/status" 2>/dev/null ||
		! cat "$R/agents/${names[0]}/health" >"$SHM/tmpfs/health" 2>/dev/null; then
		SETUP_ERR="reading health/status or agents/${names[0]}/health failed"
		return 1
	fi
	# Sanity: the document covers them all, each with a report.
	if ! grep -q "\"agents\":$READ_AGENTS," "$SHM/tmpfs/status" ||
		! grep -q '"unknown":0' "$SHM/tmpfs/status"; then
		SETUP_ERR="health/status does not show $READ_AGENTS agents with a report: ...$(tail -c 200 "$SHM/tmpfs/status")"
		return 1
	fi
	STATUS_BYTES=$(stat -c %s "$SHM/tmpfs/status")
	HEALTH_BYTES=$(stat -c %s "$SHM/tmpfs/health")
	STATUSF[busfs-read]="$R/health/status"
	READ_AGENT1=${names[0]}
	HEALTHF[busfs-read]="$R/agents/${names[0]}/health"
}
if skip reads; then
	:
elif [ -z "$BUSFS" ] || [ ! -x "$BUSFS" ]; then
	ORDER+=(busfs-read)
	FAIL[busfs-read]="${FAIL[busfs]:-no busfs binary}"
elif start_target busfs-read "$WORK/mnt-busfs-read" 300 "$BUSFS" -f --store "$SHM/store-read" \
	--health-ttl 3600 "$WORK/mnt-busfs-read"; then
	SETUP_T0=$(date +%s%N)
	if setup_reads "$WORK/mnt-busfs-read"; then
		log "reads set-up: $READ_AGENTS agents registered and reported in $SETUP_MS ms (+10 s wait); health/status $STATUS_BYTES B, agent health $HEALTH_BYTES B"
	else
		FAIL[busfs-read]="read set-up failed: $SETUP_ERR"
	fi
fi
if [ -n "$STATUS_BYTES" ]; then
	STATUSF[tmpfs]="$SHM/tmpfs/status"
	HEALTHF[tmpfs]="$SHM/tmpfs/health"
	cp "$SHM/tmpfs/status" "$SHM/tmpfs/health" "$SHM/pt-src/" 2>/dev/null &&
		STATUSF[passthrough_ll]="$WORK/mnt-pt/status" HEALTHF[passthrough_ll]="$WORK/mnt-pt/health"
	STATUSF[nullfs]="$WORK/mnt-nullfs/blob-$STATUS_BYTES"
	HEALTHF[nullfs]="$WORK/mnt-nullfs/blob-$HEALTH_BYTES"
	# shellcheck disable=SC2046
	measure "status read" "$READ_N" $(for t in "${READ_TARGETS[@]}"; do echo "status:$t"; done)
	# shellcheck disable=SC2046
	measure "agent health" "$READ_N" $(for t in "${READ_TARGETS[@]}"; do echo "health:$t"; done)
elif ! skip reads; then
	for t in "${READ_TARGETS[@]}"; do ALLJOBS+=("status:$t" "health:$t"); done
	FAIL[status:busfs-read]="no document to size the others by: ${FAIL[busfs-read]:-}"
fi

# Metric append: alice's metrics on the first busfs, nullfs's sink, a file on
# passthrough_ll and on tmpfs; 1 and 100 lines per write().
APPEND_JOBS=()
for l in "${APPEND_SIZES[@]}"; do
	for t in "${APPEND_TARGETS[@]}"; do APPEND_JOBS+=("append$l:$t"); done
done
skip append || measure "metric append" "$METRIC_N" "${APPEND_JOBS[@]}"

# Summary reads.  A third busfs, --summary-window 3600 --metrics-retention 7200, loaded
# with SUM_POINTS points through agents/A/metrics, SUM_LINES lines per write(), spread
# over SUM_AGENTS agents x SUM_METRICS metrics (set-up: timed and reported, not part of
# the read figures).  tmpfs and passthrough_ll read copies of summary.json and
# busfs.prom taken after the load, nullfs blob-SIZE files of the same sizes.
SUM_LOAD_MS="" SUM_WRITE_S="" SUM_RSS0="" SUM_RSS="" SUM_STORE_KB="" SUMMARY_BYTES="" PROM_BYTES="" SUM_ERR=""
SUM_NAGENTS=0
vmrss() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status" 2>/dev/null; }
# setup_summary ROOT: register, load, check, copy; on failure returns 1 with SUM_ERR set.
setup_summary() {
	local R=$1 i a n per left t0 total msg ws=0
	local names=()
	SUM_NAGENTS=$((SUM_POINTS < SUM_AGENTS ? SUM_POINTS : SUM_AGENTS))
	for ((i = 1; i <= SUM_NAGENTS; i++)); do
		printf -v a 's%02d' "$i"
		names+=("$a")
	done
	if ! msg=$(mkdir "${names[@]/#/$R/agents/}" 2>&1); then
		SUM_ERR="mkdir agents/...: $(printf '%s' "$msg" | head -n 2 | tr '\n' ' ')"
		return 1
	fi
	SUM_RSS0=$(vmrss "${PID[busfs-sum]}")
	per=$((SUM_POINTS / SUM_NAGENTS))
	left=$SUM_POINTS
	t0=$(date +%s%N)
	for ((i = 0; i < SUM_NAGENTS; i++)); do
		n=$per
		[ "$i" -eq $((SUM_NAGENTS - 1)) ] && n=$left
		if ! run_client "load:busfs-sum" append "$R/agents/${names[i]}/metrics" \
			"$SUM_LINES" "$n" "$SUM_METRICS"; then
			SUM_ERR="loading agents/${names[i]}/metrics: ${FAIL[load:busfs-sum]}"
			return 1
		fi
		ws=$(awk -v a="$ws" -v b="$SECS" 'BEGIN { print a + b }')
		left=$((left - n))
	done
	SUM_LOAD_MS=$((($(date +%s%N) - t0) / 1000000))
	SUM_WRITE_S=$ws
	SUM_RSS=$(vmrss "${PID[busfs-sum]}")
	SUM_STORE_KB=$(du -sk "$SHM/store-sum" 2>/dev/null | awk '{ print $1 }')
	if ! cat "$R/metrics/summary.json" >"$SHM/tmpfs/summary.json" 2>/dev/null ||
		! cat "$R/metrics/busfs.prom" >"$SHM/tmpfs/busfs.prom" 2>/dev/null; then
		SUM_ERR="reading metrics/summary.json or metrics/busfs.prom failed"
		return 1
	fi
	# Sanity: every point is in the window.
	total=$(grep -o '"count":[0-9]*' "$SHM/tmpfs/summary.json" | awk -F: '{ s += $2 } END { print s + 0 }')
	if [ "$total" != "$SUM_POINTS" ]; then
		SUM_ERR="summary.json counts $total points, not $SUM_POINTS: $(head -c 200 "$SHM/tmpfs/summary.json")"
		return 1
	fi
	SUMMARY_BYTES=$(stat -c %s "$SHM/tmpfs/summary.json")
	PROM_BYTES=$(stat -c %s "$SHM/tmpfs/busfs.prom")
	SUMMARYF[busfs-sum]="$R/metrics/summary.json"
	PROMF[busfs-sum]="$R/metrics/busfs.prom"
}
if skip summary; then
	:
elif [ -z "$BUSFS" ] || [ ! -x "$BUSFS" ]; then
	ORDER+=(busfs-sum)
	FAIL[busfs-sum]="${FAIL[busfs]:-no busfs binary}"
elif start_target busfs-sum "$WORK/mnt-busfs-sum" 300 "$BUSFS" -f --store "$SHM/store-sum" \
	--summary-window 3600 --metrics-retention 7200 "$WORK/mnt-busfs-sum"; then
	if setup_summary "$WORK/mnt-busfs-sum"; then
		log "summary set-up: $SUM_POINTS points loaded in $SUM_LOAD_MS ms ($SUM_WRITE_S s in write()); summary.json $SUMMARY_BYTES B, busfs.prom $PROM_BYTES B; RSS ${SUM_RSS} kB; store ${SUM_STORE_KB} kB"
	else
		FAIL[busfs-sum]="summary set-up failed: $SUM_ERR"
	fi
fi
if [ -n "$SUMMARY_BYTES" ]; then
	SUMMARYF[tmpfs]="$SHM/tmpfs/summary.json"
	PROMF[tmpfs]="$SHM/tmpfs/busfs.prom"
	cp "$SHM/tmpfs/summary.json" "$SHM/tmpfs/busfs.prom" "$SHM/pt-src/" 2>/dev/null &&
		SUMMARYF[passthrough_ll]="$WORK/mnt-pt/summary.json" PROMF[passthrough_ll]="$WORK/mnt-pt/busfs.prom"
	SUMMARYF[nullfs]="$WORK/mnt-nullfs/blob-$SUMMARY_BYTES"
	PROMF[nullfs]="$WORK/mnt-nullfs/blob-$PROM_BYTES"
	# shellcheck disable=SC2046
	measure "summary read" "$SUM_N" $(for t in "${SUM_TARGETS[@]}"; do echo "summary:$t"; done)
	# shellcheck disable=SC2046
	measure "busfs.prom read" "$SUM_N" $(for t in "${SUM_TARGETS[@]}"; do echo "prom:$t"; done)
elif ! skip summary; then
	for t in "${SUM_TARGETS[@]}"; do ALLJOBS+=("summary:$t" "prom:$t"); done
	FAIL[summary:busfs-sum]="no document to size the others by: ${FAIL[busfs-sum]:-}"
fi

# Memory and recovery.  A fourth busfs with default options and a store of its own:
# MEM_AGENTS agents, MEM_PER pending messages each, loaded through agents/m0001/send with
# MEM_LINES records per write().  VmRSS before and after; then kill -9, the stale mount
# removed, and the start-up time recovering the messages (journal replay); then ROUNDS
# times a clean stop (fusermount3 -u, wait for the exit) and the start-up time again.
# Start-up time: from just before the exec of busfs -f to the first successful
# stat(MNT/health/status) (client startup, polling every 0.5 ms); each recovered server
# must show every message pending in health/status.
MEM_ERR="" MEM_RSS0="" MEM_RSS1="" MEM_RSS2="" MEM_RSS3="" MEM_RSS4="" MEM_LOAD_RATE=""
MEM_START0="" MEM_KILL_MS="" MEM_CLEAN_MS="" MEM_STOP_MS="" MEM_JOURNAL="" MEM_SNAP="" MEM_STORE_KB=""
MEM_CJOURNAL="" MEM_CSNAP=""
STARTMS=""
# start_timed NAME MOUNTPOINT COMMAND...: start a -f server through `client startup`;
# sets STARTMS (ms from exec to a successful stat of MOUNTPOINT/health/status).
start_timed() {
	local name=$1 m=$2 res="$WORK/$1.startup" i r
	shift 2
	mkdir -p "$m"
	rm -f "$res"
	STARTMS=""
	"$CLIENT" startup "$m/health/status" "$TMO" "$res" -- "$@" >>"$WORK/$name.log" 2>&1 </dev/null &
	PID[$name]=$!
	MNT[$name]=$m
	[[ " ${ORDER[*]} " == *" $name "* ]] || ORDER+=("$name")
	for ((i = 0; i < TMO * 50 + 100; i++)); do
		[ -s "$res" ] && break
		sleep 0.02
	done
	r=$(cat "$res" 2>/dev/null)
	case $r in
	[0-9]*) STARTMS=$r; return 0 ;;
	esac
	MEM_ERR="start-up failed (${r:-no answer within ${TMO}s}): $(tail -n 3 "$WORK/$name.log" | tr '\n' ' ')"
	return 1
}
# mem_pending: messages_pending of the memory busfs's health/status.
mem_pending() { grep -o '"messages_pending":[0-9]*' "$WORK/mnt-busfs-mem/health/status" 2>/dev/null | cut -d: -f2; }
mem_check() { # mem_check WHEN
	local p
	p=$(mem_pending)
	[ "$p" = $((MEM_AGENTS * MEM_PER)) ] && return 0
	MEM_ERR="$1: health/status shows ${p:-no} messages pending, not $((MEM_AGENTS * MEM_PER))"
	return 1
}
setup_memory() {
	local R="$WORK/mnt-busfs-mem" st="$SHM/store-mem" names=() i a w p t0 ms
	local cmd=("$BUSFS" -f --store "$st" "$R")
	start_timed busfs-mem "$R" "${cmd[@]}" || return 1
	MEM_START0=$STARTMS
	MEM_RSS0=$(vmrss "${PID[busfs-mem]}")
	w=${#MEM_AGENTS}
	[ "$w" -lt 4 ] && w=4
	for ((i = 1; i <= MEM_AGENTS; i++)); do
		printf -v a 'm%0*d' "$w" "$i"
		names+=("$a")
	done
	if ! msg=$(mkdir "${names[@]/#/$R/agents/}" 2>&1); then
		MEM_ERR="mkdir agents/...: $(printf '%s' "$msg" | head -n 2 | tr '\n' ' ')"
		return 1
	fi
	MEM_RSS1=$(vmrss "${PID[busfs-mem]}")
	if ! run_client "load:busfs-mem" fanout "$R/agents/${names[0]}/send" m "$w" "$MEM_AGENTS" \
		"$MEM_PER" "$MEM_LINES"; then
		MEM_ERR="loading through agents/${names[0]}/send: ${FAIL[load:busfs-mem]}"
		return 1
	fi
	MEM_LOAD_RATE=$RATE
	mem_check "after loading" || return 1
	MEM_RSS2=$(vmrss "${PID[busfs-mem]}")
	MEM_STORE_KB=$(du -sk "$st" 2>/dev/null | awk '{ print $1 }')
	# kill -9, then recover.
	p=${PID[busfs-mem]}
	kill -KILL "$p" 2>/dev/null
	wait "$p" 2>/dev/null
	unset "PID[busfs-mem]"
	fusermount3 -uz "$R" 2>/dev/null || umount -l "$R" 2>/dev/null
	if is_mounted "$R"; then
		MEM_ERR="the stale mount after kill -9 could not be removed"
		return 1
	fi
	MEM_JOURNAL=$(stat -c %s "$st/journal" 2>/dev/null || echo 0)
	MEM_SNAP=$(stat -c %s "$st/snapshot" 2>/dev/null || echo 0)
	start_timed busfs-mem "$R" "${cmd[@]}" || { MEM_ERR="after kill -9: $MEM_ERR"; return 1; }
	MEM_KILL_MS=$STARTMS
	mem_check "recovered after kill -9" || return 1
	MEM_RSS3=$(vmrss "${PID[busfs-mem]}")
	log "memory: kill -9 + restart: up in $MEM_KILL_MS ms, RSS $MEM_RSS3 kB"
	for ((i = 1; i <= ROUNDS; i++)); do
		t0=$(date +%s%N)
		stop_target busfs-mem || { MEM_ERR="clean stop $i failed"; return 1; }
		ms=$((($(date +%s%N) - t0) / 1000000))
		if [ -n "${STOPFAIL[busfs-mem]:-}" ]; then
			MEM_ERR="clean stop $i: server ${STOPFAIL[busfs-mem]}"
			return 1
		fi
		MEM_STOP_MS+="$ms "
		MEM_CJOURNAL=$(stat -c %s "$st/journal" 2>/dev/null || echo 0)
		MEM_CSNAP=$(stat -c %s "$st/snapshot" 2>/dev/null || echo 0)
		start_timed busfs-mem "$R" "${cmd[@]}" || { MEM_ERR="after clean stop $i: $MEM_ERR"; return 1; }
		MEM_CLEAN_MS+="$STARTMS "
		mem_check "recovered after clean stop $i" || return 1
		log "memory: clean stop $i/$ROUNDS took $ms ms; restart: up in $STARTMS ms"
	done
	MEM_RSS4=$(vmrss "${PID[busfs-mem]}")
}
if skip memory; then
	:
elif [ -z "$BUSFS" ] || [ ! -x "$BUSFS" ]; then
	ORDER+=(busfs-mem)
	FAIL[busfs-mem]="${FAIL[busfs]:-no busfs binary}"
elif setup_memory; then
	log "memory: $((MEM_AGENTS * MEM_PER)) messages loaded at ${MEM_LOAD_RATE%.*} msgs/s; RSS $MEM_RSS0 -> $MEM_RSS1 -> $MEM_RSS2 kB"
else
	FAIL[busfs-mem]="memory and recovery: $MEM_ERR"
fi
# ---------------------------------------------------------------- consuming
# One worker takes CONS_N messages one at a time from an agent of its own busfs, as
# a v1 worker does (read next, rm its inbox file) and as a leasing one does (read
# claim, rm the inflight/ file its lease names): ROUNDS rounds, the two interleaved.
declare -A CONS_RATES=([next]="" [claim]="")
CONS_ERR=""
setup_consume() {
	local R="$WORK/mnt-busfs-lease" st="$SHM/store-lease" r mode
	start_timed busfs-lease "$R" "$BUSFS" -f --store "$st" --inbox-capacity $((CONS_N + 100)) "$R" ||
		{ CONS_ERR=$MEM_ERR; return 1; }
	if ! mkdir "$R/agents/p" "$R/agents/c1" 2>/dev/null; then
		CONS_ERR="mkdir agents/p agents/c1 failed"
		return 1
	fi
	for ((r = 1; r <= ROUNDS; r++)); do
		for mode in next claim; do
			if ! run_client "fill:busfs-lease" fanout "$R/agents/p/send" c 1 1 "$CONS_N" 100; then
				CONS_ERR="filling agents/c1: ${FAIL[fill:busfs-lease]}"
				return 1
			fi
			if ! run_client "consume-$mode:busfs-lease" consume "$mode" "$R/agents/c1" "$CONS_N"; then
				CONS_ERR="consume $mode: ${FAIL[consume-$mode:busfs-lease]}"
				return 1
			fi
			CONS_RATES[$mode]+="$RATE "
		done
		log "consume: round $r/$ROUNDS: next+rm ${CONS_RATES[next]##* }, claim+ack ${CONS_RATES[claim]##* } msgs/s"
	done
}
if skip consume; then
	:
elif [ -z "$BUSFS" ] || [ ! -x "$BUSFS" ]; then
	ORDER+=(busfs-lease)
	FAIL[busfs-lease]="${FAIL[busfs]:-no busfs binary}"
elif ! setup_consume; then
	FAIL[busfs-lease]="consume: $CONS_ERR"
fi
T1=$(date +%s)

# ---------------------------------------------------------------- table
declare -A MED=()
for job in "${!RATES[@]}"; do
	# A job that failed in any round is reported as failed, not as a median of survivors;
	# jobs of the same target that completed before it keep their figures.
	[ -n "${FAIL[$job]:-}" ] && continue
	MED[$job]=$(printf '%s' "${RATES[$job]}" | median)
done
declare -A MEDB=()
for job in "${!BYTESR[@]}"; do
	[ -n "${FAIL[$job]:-}" ] && continue
	MEDB[$job]=$(printf '%s' "${BYTESR[$job]}" | median)
done

ratio() { # ratio RATE REF_JOB
	local ref=${MED[$2]:-}
	[ -n "$1" ] && [ -n "$ref" ] || { echo "-"; return; }
	awk -v a="$1" -v b="$ref" 'BEGIN { r = a / b; printf (r < 0.1 ? "%.4f" : "%.2f"), r }'
}

row() { # row WORKLOAD JOB NULL_REF TMPFS_REF
	local wl=$1 job=$2 t=${2#*:} m why
	m=${MED[$job]:-}
	if [ -n "$m" ]; then
		printf '%-16s %-22s %12.0f %10.2f %11s %9s\n' "$wl" "${LABEL[$t]}" "$m" \
			"$(awk -v r="$m" 'BEGIN { print 1e6 / r }')" "$(ratio "$m" "$3")" "$(ratio "$m" "$4")"
	else
		why="not run"
		[ -n "${FAIL[$job]:-}" ] && why="FAILED"
		printf '%-16s %-22s %12s %10s %11s %9s\n' "$wl" "${LABEL[$t]}" "$why" "-" "-" "-"
	fi
}

row_read() { # row_read WORKLOAD JOB NULL_REF TMPFS_REF
	local wl=$1 job=$2 t=${2#*:} m why over="-"
	m=${MED[$job]:-}
	if [ -n "$m" ]; then
		[ -n "${MED[$3]:-}" ] &&
			over=$(awk -v r="$m" -v f="${MED[$3]}" 'BEGIN { printf "%+.1f", 1e6 / r - 1e6 / f }')
		printf '%-14s %-21s %10.0f %9.2f %10.0f %9s %8s %8s\n' "$wl" "${LABEL[$t]}" "$m" \
			"$(awk -v r="$m" 'BEGIN { print 1e6 / r }')" "${MEDB[$job]:-0}" "$over" \
			"$(ratio "$m" "$3")" "$(ratio "$m" "$4")"
	else
		why="not run"
		[ -n "${FAIL[$job]:-}" ] && why="FAILED"
		printf '%-14s %-21s %10s %9s %10s %9s %8s %8s\n' "$wl" "${LABEL[$t]}" "$why" - - - - -
	fi
}

echo
echo "Medians of $ROUNDS interleaved rounds ($((T1 - T0)) s of measuring). One outbox message ="
echo "open(O_WRONLY|O_CREAT|O_TRUNC) + write(200 B) + close; batch = one fd, N lines per write()."
echo "x nullfs = msgs/s / nullfs single-thread outbox msgs/s with as many processes (the"
echo "FUSE floor); x tmpfs = msgs/s / the same workload on plain tmpfs. nullfs sees busfs's"
echo "outbox/B sequence (LOOKUP miss x2, CREATE, WRITE, FLUSH, RELEASE, FORGET: zero timeouts);"
echo "passthrough_ll's file exists and stays cached for 1 s (OPEN instead of LOOKUPs + CREATE)."
echo
printf '%-16s %-22s %12s %10s %11s %9s\n' workload target msgs/s "us/op" "x nullfs" "x tmpfs"
printf '%s\n' "-------------------------------------------------------------------------------------"
for t in "${TARGETS[@]}"; do row "outbox 1 proc" "outbox1:$t" outbox1:nullfs outbox1:tmpfs; done
echo
for t in "${TARGETS[@]}"; do row "outbox $PROCS procs" "outboxP:$t" outboxP:nullfs outboxP:tmpfs; done
echo
for l in "${BATCH_SIZES[@]}"; do
	for t in busfs tmpfs; do
		row "batch $l/write" "batch$l:$t" outbox1:nullfs "batch$l:tmpfs"
	done
done
echo

# Wake-up table.
us_of() { [ -n "${MED[$1]:-}" ] && awk -v r="${MED[$1]}" 'BEGIN { printf "%.1f", 1e6 / r }'; }
echo "Wake-up: a reader process blocked in read() of agents/carol/next (first busfs); the"
echo "sender waits until it sleeps there, then open(outbox/carol, O_CREAT|O_WRONLY) +"
echo "write(200 B) + close. Latency = CLOCK_MONOTONIC just before the open() to the reader's"
echo "read() returning; the reader acks each message (ctl) after the sender's close(). tmpfs:"
echo "a reader blocked in read() of an inotify fd (IN_CLOSE_WRITE), the sender creating a"
echo "file there. All samples of all rounds ($WAKE_N per round). send = the sender's own"
echo "open+write+close in these samples (median); x send = p50 / send; x outbox = p50 / the"
echo "us/op of 'outbox 1 proc' on the same target."
echo
printf '%-16s %-22s %8s %9s %9s %9s %9s %7s %8s\n' workload target samples "p50 us" "p99 us" "max us" "send us" "x send" "x outbox"
printf '%s\n' "---------------------------------------------------------------------------------------------------"
for t in "${WAKE_TARGETS[@]}"; do
	lab="${LABEL[$t]} (next)"
	[ "$t" = tmpfs ] && lab="tmpfs (inotify)"
	if [ -n "${WAKE_P50[$t]:-}" ]; then
		ob=$(us_of "outbox1:$t")
		printf '%-16s %-22s %8s %9.1f %9.1f %9.1f %9.1f %7s %8s\n' "wake-up" "$lab" "${WAKE_NS[$t]}" \
			"${WAKE_P50[$t]}" "${WAKE_P99[$t]}" "${WAKE_MAX[$t]}" "${WAKE_SEND[$t]}" \
			"$(awk -v a="${WAKE_P50[$t]}" -v b="${WAKE_SEND[$t]}" 'BEGIN { printf "%.2f", a / b }')" \
			"$( [ -n "$ob" ] && awk -v a="${WAKE_P50[$t]}" -v b="$ob" 'BEGIN { printf "%.2f", a / b }' || echo -)"
	else
		why="not run"
		[ -n "${FAIL[wake:$t]:-}" ] && why="FAILED"
		printf '%-16s %-22s %8s %9s %9s %9s %9s %7s %8s\n' "wake-up" "$lab" "$why" - - - - - -
	fi
done
if [ -n "${WAKE_P50[busfs]:-}" ]; then
	awk -v p50="${WAKE_P50[busfs]}" -v p99="${WAKE_P99[busfs]}" -v s="${WAKE_SEND[busfs]}" \
		-v ob="$(us_of outbox1:busfs)" -v gx="$WAKE_GOAL_X" -v g99="$WAKE_GOAL_P99_US" 'BEGIN {
		printf "busfs wake-up p50 <= %.1f x one send: %s (%.2f x the send in these samples, %.1f us",
			gx, (p50 <= gx * s) ? "MET" : "NOT MET", p50 / s, s
		if (ob != "") printf "; %.2f x outbox 1 proc, %.1f us", p50 / ob, ob
		printf ")\n"
		printf "busfs wake-up p99 <= %.0f ms: %s (%.2f ms)\n", g99 / 1000,
			(p99 <= g99) ? "MET" : "NOT MET", p99 / 1000 }'
else
	echo "busfs wake-up goals: not measured"
fi
echo

# Shell table.
echo "Shell: one process per message: $SHELL_BIN -c 'echo x > FILE' spawned (posix_spawn) and"
echo "waited for; FILE = agents/alice/outbox/bob of the first busfs, nullfs's msg, a tmpfs"
echo "file, /dev/null. us/op is the whole process; x nullfs and x tmpfs are rate ratios."
echo
printf '%-16s %-22s %12s %10s %11s %9s\n' workload target "cmds/s" "us/op" "x nullfs" "x tmpfs"
printf '%s\n' "-------------------------------------------------------------------------------------"
for t in "${SHELL_TARGETS[@]}"; do row "shell echo >" "shell:$t" shell:nullfs shell:tmpfs; done
if [ -n "${MED[shell:busfs]:-}" ] && [ -n "${MED[shell:tmpfs]:-}" ]; then
	awk -v b="${MED[shell:busfs]}" -v t="${MED[shell:tmpfs]}" 'BEGIN {
		printf "busfs adds %.0f us (%.1f%%) to a shell command that writes a tmpfs file.\n",
			1e6 / b - 1e6 / t, (t / b - 1) * 100 }'
fi
echo
echo "Reads: one read = open(O_RDONLY) + read() into a 64 KiB buffer until it returns 0 +"
echo "close. busfs (a second mount, --health-ttl 3600) reads health/status with"
echo "$READ_AGENTS agents that each reported once (healthy / 'degraded disk 91% full' /"
echo "{\"status\":\"healthy\",\"queue\":17} in turn), rendered at every open, and"
echo "agents/${READ_AGENT1:-a0001}/health. tmpfs and passthrough_ll read copies of the two documents"
echo "(${STATUS_BYTES:-?} B and ${HEALTH_BYTES:-?} B) through the page cache; passthrough_ll drops its"
echo "pages at each open. nullfs reads blob-SIZE of the same size: OPEN, READ until a"
echo "short reply, FLUSH, RELEASE, direct_io like busfs, no work. bytes = median bytes"
echo "per read; +us = us/read minus nullfs's; x nullfs = reads/s / nullfs reads/s."
echo
printf '%-14s %-21s %10s %9s %10s %9s %8s %8s\n' workload target reads/s "us/read" bytes "+us" "x nullfs" "x tmpfs"
printf '%s\n' "-------------------------------------------------------------------------------------------"
for t in "${READ_TARGETS[@]}"; do row_read "status read" "status:$t" status:nullfs status:tmpfs; done
echo
for t in "${READ_TARGETS[@]}"; do row_read "agent health" "health:$t" health:nullfs health:tmpfs; done
echo

row_append() { # row_append WORKLOAD JOB LINES NULL_REF TMPFS_REF
	local wl=$1 job=$2 l=$3 t=${2#*:} m why
	m=${MED[$job]:-}
	if [ -n "$m" ]; then
		printf '%-16s %-22s %12.0f %10.2f %11s %9s\n' "$wl" "${LABEL[$t]}" "$m" \
			"$(awk -v r="$m" -v l="$l" 'BEGIN { print 1e6 * l / r }')" "$(ratio "$m" "$4")" "$(ratio "$m" "$5")"
	else
		why="not run"
		[ -n "${FAIL[$job]:-}" ] && why="FAILED"
		printf '%-16s %-22s %12s %10s %11s %9s\n' "$wl" "${LABEL[$t]}" "$why" - - -
	fi
}
mib() { [ -n "$1" ] && awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }' || echo "?"; }
echo "Metric append: one open(O_WRONLY|O_APPEND), then N points written L lines per write()"
echo "(lines like 'coordination.time 43576.1 ms phase=test', values varying, about 41 B each),"
echo "then close. busfs: agents/alice/metrics of the first busfs (--summary-window 60,"
echo "--metrics-retention 3600); nullfs: its sink file (every WRITE accepted and dropped,"
echo "direct_io like busfs); passthrough_ll and tmpfs: a file emptied before each run."
echo "us/write = L x 1e6 / points/s; x nullfs and x tmpfs compare with as many lines per write."
echo
printf '%-16s %-22s %12s %10s %11s %9s\n' workload target points/s "us/write" "x nullfs" "x tmpfs"
printf '%s\n' "-------------------------------------------------------------------------------------"
for l in "${APPEND_SIZES[@]}"; do
	for t in "${APPEND_TARGETS[@]}"; do
		row_append "append $l/write" "append$l:$t" "$l" "append$l:nullfs" "append$l:tmpfs"
	done
	echo
done

echo "Metrics documents: a third busfs (--summary-window 3600 --metrics-retention 7200)"
if [ -n "$SUM_LOAD_MS" ]; then
	echo "holding $SUM_POINTS points, $SUM_NAGENTS agents x $SUM_METRICS metrics, loaded through agents/A/metrics"
	awk -v p="$SUM_POINTS" -v ms="$SUM_LOAD_MS" -v ws="$SUM_WRITE_S" -v l="$SUM_LINES" -v na="$SUM_NAGENTS" 'BEGIN {
		printf "%d lines per write(), one writer at a time (set-up, not in the figures below):\n", l
		printf "%.2f s in write() = %.0f points/s; %.1f s wall clock with %d client starts.\n",
			ws, p / (ws > 0 ? ws : 1e-9), ms / 1000, na }'
	echo "busfs server RSS (VmRSS): $(mib "$SUM_RSS0") before loading, $(mib "$SUM_RSS") after;"
	echo "store on disk (du -sk of the store dir): $(mib "$SUM_STORE_KB")."
elif skip summary; then
	echo "holding $SUM_POINTS points: not run (BENCH_SKIP)."
else
	echo "holding $SUM_POINTS points: set-up failed (see below)."
fi
echo "One read = open + read() until 0 + close, rendered at every open; tmpfs and"
echo "passthrough_ll read copies (${SUMMARY_BYTES:-?} B and ${PROM_BYTES:-?} B), nullfs blob-SIZE files."
echo
printf '%-14s %-21s %10s %9s %10s %9s %8s %8s\n' workload target reads/s "us/read" bytes "+us" "x nullfs" "x tmpfs"
printf '%s\n' "-------------------------------------------------------------------------------------------"
for t in "${SUM_TARGETS[@]}"; do row_read "summary.json" "summary:$t" summary:nullfs summary:tmpfs; done
echo
for t in "${SUM_TARGETS[@]}"; do row_read "busfs.prom" "prom:$t" prom:nullfs prom:tmpfs; done
echo
if [ -n "${MED[summary:busfs-sum]:-}" ]; then
	awk -v r="${MED[summary:busfs-sum]}" -v g="$SUM_GOAL_US" -v p="$SUM_POINTS" \
		-v rates="${RATES[summary:busfs-sum]}" -v slow="${SLOWEST[summary:busfs-sum]:-}" 'BEGIN {
		us = 1e6 / r
		n = split(rates, a, " "); worst = 0
		for (i = 1; i <= n; i++) if (1e6 / a[i] > worst) worst = 1e6 / a[i]
		n = split(slow, b, " "); single = 0
		for (i = 1; i <= n; i++) if (b[i] + 0 > single) single = b[i] + 0
		printf "summary.json with %d points in the window, goal <= %.0f ms per read: %s\n",
			p, g / 1000, (us <= g) ? "MET" : "NOT MET"
		printf "  median %.2f ms per read; slowest round %.2f ms per read; slowest single read %.2f ms\n",
			us / 1000, worst / 1000, single / 1000 }'
else
	echo "summary.json goal <= $((SUM_GOAL_US / 1000)) ms per read: not measured"
fi
echo

# Memory and recovery.
echo "Memory and recovery: a fourth busfs (default options, its own store on tmpfs) with"
echo "$MEM_AGENTS agents x $MEM_PER pending messages, loaded through agents/m0001/send"
echo "($MEM_LINES records of about 180 B per write()${MEM_LOAD_RATE:+, ${MEM_LOAD_RATE%.*} msgs/s})."
echo "Start-up = from just before the exec of busfs -f to the first successful stat of"
echo "MNT/health/status (polled every 0.5 ms); every restart showed all messages pending."
echo
mem_row() { # mem_row WHAT VALUE GOAL VERDICT
	printf '%-44s %-8s %12s %10s %8s\n' "$1" busfs "${2:-not run}" "${3:--}" "${4:--}"
}
kib_mib() { [ -n "$1" ] && awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }
ms_fmt() { [ -n "$1" ] && awk -v m="$1" 'BEGIN { printf "%.1f ms", m }'; }
verdict() { # verdict VALUE GOAL
	[ -n "$1" ] || return 0
	awk -v v="$1" -v g="$2" 'BEGIN { print (v <= g) ? "MET" : "NOT MET" }'
}
printf '%-44s %-8s %12s %10s %8s\n' measurement target value goal verdict
printf '%s\n' "-------------------------------------------------------------------------------------"
mem_row "RSS, started on an empty store" "$(kib_mib "$MEM_RSS0")"
mem_row "RSS, $MEM_AGENTS agents registered" "$(kib_mib "$MEM_RSS1")"
mem_row "RSS, $MEM_AGENTS x $MEM_PER messages pending" "$(kib_mib "$MEM_RSS2")" "<= $MEM_GOAL_MIB MiB" \
	"$(verdict "$MEM_RSS2" $((MEM_GOAL_MIB * 1024)))"
mem_row "RSS, recovered after kill -9" "$(kib_mib "$MEM_RSS3")"
mem_row "RSS, recovered after clean stop" "$(kib_mib "$MEM_RSS4")"
mem_row "store on disk (du -sk), loaded" "$(kib_mib "$MEM_STORE_KB")"
echo
CLEAN_MED=$(printf '%s' "$MEM_CLEAN_MS" | median 2>/dev/null)
CLEAN_MAX=$(printf '%s' "$MEM_CLEAN_MS" | tr ' ' '\n' | grep . | sort -g | tail -n 1)
STOP_MED=$(printf '%s' "$MEM_STOP_MS" | median 2>/dev/null)
mem_row "start-up, empty store" "$(ms_fmt "$MEM_START0")"
mem_row "start-up after kill -9 (journal replay)" "$(ms_fmt "$MEM_KILL_MS")" "<= $START_GOAL_MS ms" \
	"$(verdict "$MEM_KILL_MS" "$START_GOAL_MS")"
mem_row "start-up after clean stop, median" "$(ms_fmt "$CLEAN_MED")" "<= $START_GOAL_MS ms" \
	"$(verdict "$CLEAN_MED" "$START_GOAL_MS")"
mem_row "start-up after clean stop, slowest" "$(ms_fmt "$CLEAN_MAX")" "<= $START_GOAL_MS ms" \
	"$(verdict "$CLEAN_MAX" "$START_GOAL_MS")"
mem_row "clean stop, fusermount3 -u to exit, median" "$(ms_fmt "$STOP_MED")"
if [ -n "$MEM_KILL_MS" ]; then
	echo "Replayed after kill -9: journal $(kib_mib $((MEM_JOURNAL / 1024))), snapshot $(kib_mib $((MEM_SNAP / 1024)));"
	echo "loaded after a clean stop: journal $(kib_mib $((MEM_CJOURNAL / 1024))), snapshot $(kib_mib $((MEM_CSNAP / 1024)))."
	echo "Clean restarts: $(printf '%s' "$MEM_CLEAN_MS" | wc -w) (ms: ${MEM_CLEAN_MS% })."
fi
echo

echo
echo "Consuming: one worker takes $CONS_N messages one at a time from an agent of its own"
echo "busfs: next+rm = open+read+close of agents/c1/next, then unlink of its inbox file (v1);"
echo "claim+ack = the same read of agents/c1/claim (which leases the message), then unlink of"
echo "the inflight/ file its lease names. Medians of $ROUNDS interleaved rounds, min-max."
echo
printf '%-16s %12s %10s %16s %12s\n' workload "msgs/s" "us/op" "min-max msgs/s" "x next+rm"
printf '%s\n' "----------------------------------------------------------------------"
if [ -n "${FAIL[busfs-lease]:-}" ]; then
	echo "not measured: ${FAIL[busfs-lease]}"
elif ! skip consume; then
	cn=$(median <<<"${CONS_RATES[next]}")
	cc=$(median <<<"${CONS_RATES[claim]}")
	for mode in next claim; do
		m=$(median <<<"${CONS_RATES[$mode]}")
		lo=$(tr ' ' '\n' <<<"${CONS_RATES[$mode]}" | grep . | sort -g | head -1)
		hi=$(tr ' ' '\n' <<<"${CONS_RATES[$mode]}" | grep . | sort -g | tail -1)
		printf '%-16s %12.0f %10.1f %16s %12s\n' "$mode$([ $mode = next ] && echo +rm || echo +ack)" \
			"$m" "$(awk -v r="$m" 'BEGIN { print 1e6 / r }')" "${lo%.*}-${hi%.*}" \
			"$(awk -v a="$cn" -v b="$m" 'BEGIN { printf "%.2f", a / b }')"
	done
	x=$(awk -v a="$cn" -v b="$cc" 'BEGIN { printf "%.2f", a / b }')
	echo "claim+ack costs ${x}x next+rm per message (goal <= ${CONS_GOAL_X}x): $(awk -v x="$x" -v g="$CONS_GOAL_X" 'BEGIN { print (x <= g) ? "met" : "NOT met" }')"
fi

# ---------------------------------------------------------------- failures
# Exit status: 0 only when every target and workload was measured and every server
# stopped cleanly.
for n in "${ORDER[@]}"; do stop_target "$n"; done
status=0
for n in "${ORDER[@]}"; do
	if [ -n "${STOPFAIL[$n]:-}" ]; then
		echo "$n: server ${STOPFAIL[$n]}"
		status=1
	elif [ -n "${STOPSLOW[$n]:-}" ]; then
		echo "$n: server ${STOPSLOW[$n]} (not a failure)"
	fi
done
for t in "${TARGETS[@]}" busfs-read busfs-sum busfs-mem busfs-lease; do
	if [ -n "${FAIL[$t]:-}" ]; then
		echo "$t: not measured: ${FAIL[$t]}"
		status=1
	fi
done
for job in "${ALLJOBS[@]}"; do
	if [ -n "${FAIL[$job]:-}" ]; then
		echo "$job: FAILED: ${FAIL[$job]}"
		status=1
	fi
done
if [ -n "${FAIL[busfs]:-}" ] || [ -n "${FAIL[busfs-read]:-}" ] || [ -n "${FAIL[busfs-sum]:-}" ] ||
	[ -n "${FAIL[busfs-mem]:-}" ] || [ -n "${FAIL[busfs-lease]:-}" ]; then
	echo "busfs FAILED (the other targets were measured without it)."
elif [ "$status" = 0 ]; then
	echo "all targets measured."
fi
exit $status

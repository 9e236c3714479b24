#!/usr/bin/env bash
# busfs benchmark: one message per open+write+close, and batched `send` writes,
# against the FUSE floor (nullfs), libfuse's passthrough_ll, and plain tmpfs.
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
#   BENCH_TIMEOUT     seconds before one client run counts as hung     (120)
#
# Needs nullfs and client in ./out (the Makefile builds them), cc, pkg-config,
# fuse3 (fusermount3) and libfuse3-dev (for the passthrough_ll example).

set -u

HERE=$(cd "$(dirname "$0")" && pwd)
OUTDIR="$HERE/out"
NULLFS="$OUTDIR/nullfs"
CLIENT="$OUTDIR/client"
BUSFS=${1:-${BUSFS:-}}

N=${BENCH_N:-20000}
BATCH_N=${BENCH_BATCH_N:-50000}
ROUNDS=${BENCH_ROUNDS:-5}
ROUND_SECS=${BENCH_ROUND_SECS:-1.5}
PROCS=${BENCH_PROCS:-4}
TMO=${BENCH_TIMEOUT:-120}
BATCH_SIZES=(1 10 100 1000)
EXAMPLES=/usr/share/doc/libfuse3-dev/examples

for v in N BATCH_N ROUNDS PROCS TMO; do
	case ${!v} in
	'' | *[!0-9]* | 0) echo "bench: $v must be a positive integer (got '${!v}')" >&2; exit 2 ;;
	esac
done

case $ROUND_SECS in
'' | *[!0-9.]* | *.*.*) echo "bench: BENCH_ROUND_SECS must be a number of seconds (got '$ROUND_SECS')" >&2; exit 2 ;;
esac

log() { printf '%s\n' "$*" >&2; }

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
# does not); a server that crashes or fails on the way out is recorded in STOPFAIL.
declare -A STOPFAIL=()
stop_target() {
	local name=$1 m=${MNT[$1]:-} p=${PID[$1]:-} rc sig=""
	if [ -n "$m" ] && is_mounted "$m"; then
		fusermount3 -u "$m" 2>/dev/null
	fi
	if [ -n "$p" ]; then
		if ! wait_gone "$p" 30; then
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

declare -A OUTBOX=() BATCHF=()

# (a) nullfs, single-threaded loop — the FUSE floor
if start_target nullfs "$WORK/mnt-nullfs" 200 "$NULLFS" -f "$WORK/mnt-nullfs"; then
	OUTBOX[nullfs]="$WORK/mnt-nullfs/msg"
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
	if msg=$(mkdir "$B/agents/alice" "$B/agents/bob" 2>&1); then
		OUTBOX[busfs]="$B/agents/alice/outbox/bob"
		BATCHF[busfs]="$B/agents/alice/send"
	else
		FAIL[busfs]="mounted, but registering agents failed: $msg"
	fi
fi
# (e) plain tmpfs
mkdir -p "$SHM/tmpfs"
OUTBOX[tmpfs]="$SHM/tmpfs/msg"
BATCHF[tmpfs]="$SHM/tmpfs/batch.jsonl"
: >"${BATCHF[tmpfs]}"
ORDER+=(tmpfs)

TARGETS=(nullfs nullfs-mt passthrough_ll busfs tmpfs)
declare -A LABEL=(
	[nullfs]="nullfs (1 thread)"
	[nullfs-mt]="nullfs (--mt)"
	[passthrough_ll]="passthrough_ll/tmpfs"
	[busfs]="busfs"
	[tmpfs]="tmpfs"
)

# ---------------------------------------------------------------- measuring
declare -A RATES=() COUNT=()
ALLJOBS=()

# run_client JOB ARGS...: one client run; sets RATE, or records the failure in FAIL[JOB].
# (Not run in a $(...) subshell, so FAIL survives.)
RATE=""
run_client() {
	local job=$1 out rc
	shift
	RATE=""
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
	RATE=$(printf '%s\n' "$out" | awk '/msgs\/s/ { r = $1 } END { print r }')
	if [ -z "$RATE" ]; then
		FAIL[$job]="unexpected client output: $out"
		return 1
	fi
}

# job_args JOB COUNT: the client command line of a job.
#   jobs: outbox1:T, outboxP:T, batchL:T
job_args() {
	local job=$1 n=$2 kind=${1%%:*} t=${1#*:}
	case $kind in
	outbox1) echo outbox "${OUTBOX[$t]}" "$n" ;;
	outboxP) echo outbox-procs "$PROCS" "${OUTBOX[$t]}" "$n" ;;
	batch*) echo batch "${BATCHF[$t]}" "${kind#batch}" "$n" ;;
	esac
}

# run_job JOB COUNT: sets RATE; a failing job stays failed.
run_job() {
	local job=$1 n=$2 t=${1#*:} args
	[ -n "${FAIL[$job]:-}" ] && return 1
	[ -n "${FAIL[$t]:-}" ] && return 1
	# shellcheck disable=SC2207
	args=($(job_args "$job" "$n"))
	case $job in batch*:tmpfs) : >"${BATCHF[tmpfs]}" ;; esac
	run_client "$job" "${args[@]}"
}

# measure TITLE MAXN JOB...: a warm-up run of each job fixes its count (about ROUND_SECS
# long, at most MAXN), then ROUNDS rounds run the jobs interleaved A B C A B C ...
measure() {
	local title=$1 maxn=$2 job r n cal line
	shift 2
	local jobs=("$@")
	ALLJOBS+=("$@")
	cal=$((maxn < 2000 ? maxn : 2000))
	for job in "${jobs[@]}"; do
		n=$cal
		# A warm-up of big batches needs more than a couple of writes.
		case $job in batch100:* | batch1000:*) n=$((cal * 5 > maxn ? maxn : cal * 5)) ;; esac
		if run_job "$job" "$n"; then
			COUNT[$job]=$(awk -v r="$RATE" -v s="$ROUND_SECS" -v m="$maxn" 'BEGIN {
				n = (s > 0) ? int(r * s) : m; if (n < 1000) n = 1000; if (n > m) n = m; print n }')
		fi
	done
	for ((r = 1; r <= ROUNDS; r++)); do
		line="$title round $r/$ROUNDS:"
		for job in "${jobs[@]}"; do
			if run_job "$job" "${COUNT[$job]:-$maxn}"; then
				RATES[$job]+="$RATE "
				line+=" ${job#*:}=${RATE%.*}/s"
			else
				line+=" ${job#*:}=FAILED"
			fi
		done
		log "$line"
	done
}

median() { tr ' ' '\n' | grep . | sort -g | awk '{ a[NR] = $1 } END {
	if (NR == 0) exit 1; if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

jobs_for() { local k=$1 t; for t in "${TARGETS[@]}"; do echo "$k:$t"; done; }

T0=$(date +%s)
# shellcheck disable=SC2046
measure "outbox 1 proc" "$N" $(jobs_for outbox1)
# shellcheck disable=SC2046
measure "outbox $PROCS procs" "$N" $(jobs_for outboxP)
BATCH_JOBS=()
for l in "${BATCH_SIZES[@]}"; do BATCH_JOBS+=("batch$l:busfs" "batch$l:tmpfs"); done
measure "batch" "$BATCH_N" "${BATCH_JOBS[@]}"
T1=$(date +%s)

# ---------------------------------------------------------------- table
declare -A MED=()
for job in "${!RATES[@]}"; do
	# A job that failed in any round is reported as failed, not as a median of survivors;
	# jobs of the same target that completed before it keep their figures.
	[ -n "${FAIL[$job]:-}" ] && continue
	MED[$job]=$(printf '%s' "${RATES[$job]}" | median)
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

# ---------------------------------------------------------------- failures
# Exit status: 0 only when every target and workload was measured and every server
# stopped cleanly.
for n in "${ORDER[@]}"; do stop_target "$n"; done
status=0
for n in "${ORDER[@]}"; do
	if [ -n "${STOPFAIL[$n]:-}" ]; then
		echo "$n: server ${STOPFAIL[$n]}"
		status=1
	fi
done
for t in "${TARGETS[@]}"; do
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
if [ -n "${FAIL[busfs]:-}" ]; then
	echo "busfs FAILED (the other targets were measured without it)."
elif [ "$status" = 0 ]; then
	echo "all targets measured."
fi
exit $status

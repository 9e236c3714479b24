#!/usr/bin/env bash
# durable.sh BUSFS — sends that survive a power cut, for `make bench`: busfs --sync
# against Redis with `appendfsync always`, side by side on the same disk filesystem.
#
# Both acknowledge a send only once it is on stable storage: busfs after an fdatasync
# of its journal covered it (one for every commit made meanwhile), Redis after the
# fsync of its append-only file that ends the event-loop round the command was in.
# Per round, interleaved, 200-byte messages, each sender waiting for every answer:
#   busfs outbox  W writers, agents w1..wW: client outbox-procs (open, write, close of
#                 outbox/bob for each message)
#   busfs send    W writers, agents w1..wW: client send-procs (one open `send` file
#                 each, one record per write(): a sender that stays connected, as a
#                 Redis client does)
#   redis         W clients: redis-benchmark -t lpush -c W -P 1 (one LPUSH at a time each)
# for W = 1 and 8, and busfs --no-sync on the same disk for reference. Writers are
# separate agents because the kernel lets one WRITE at a time into one FUSE file that
# is appended to: eight writers on one agent's `send` take turns, one fdatasync each.
# Each server has its own port, temp dir and store and is stopped by pid.
#
# Environment: BENCH_DURABLE_N (sends per round per target, 4000), BENCH_ROUNDS (5),
# BENCH_DURABLE_DIR (a directory on the disk to measure, /var/tmp), BENCH_SKIP
# (containing "durable": skip).
set -euo pipefail

BUSFS=${1:?usage: durable.sh BUSFS}
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$HERE/out
N=${BENCH_DURABLE_N:-4000}
ROUNDS=${BENCH_ROUNDS:-5}
BASE=${BENCH_DURABLE_DIR:-/var/tmp}
log() { printf '%s\n' "$*" >&2; }
# shellcheck source=lib.sh
. "$HERE/lib.sh"

if [[ " ${BENCH_SKIP:-} " == *" durable "* ]]; then
	log "durable: skipped (BENCH_SKIP)"
	exit 0
fi
REDIS=$(command -v redis-server || true)
REDIS_BENCH=$(command -v redis-benchmark || true)
REDIS_CLI=$(command -v redis-cli || true)
if [ -z "$REDIS" ] || [ -z "$REDIS_BENCH" ] || [ -z "$REDIS_CLI" ]; then
	log "durable: redis-server is not installed (make bench installs it): skipped"
	exit 0
fi
FSTYPE=$(stat -f -c %T "$BASE")
if [ "$FSTYPE" = tmpfs ] || [ "$FSTYPE" = ramfs ]; then
	log "durable: $BASE is $FSTYPE, not a disk; set BENCH_DURABLE_DIR: skipped"
	exit 0
fi

WORK=$(mktemp -d "$BASE/busfs-bench-durable-XXXXXX")
PIDS=()
cleanup() {
	for m in "$WORK/mnt-sync" "$WORK/mnt-nosync"; do
		fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null || true
	done
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(free_port)
mkdir -p "$WORK/redis"
"$REDIS" --port "$PORT" --bind 127.0.0.1 --dir "$WORK/redis" --appendonly yes \
	--appendfsync always --save "" --daemonize no --logfile "$WORK/redis.log" &
PIDS+=($!)
redis_up "$REDIS_CLI" "$PORT" || { log "durable: redis-server did not start ($WORK/redis.log)"; exit 1; }

for mode in sync nosync; do
	mkdir -p "$WORK/mnt-$mode"
	"$BUSFS" -f --"${mode/nosync/no-sync}" --store "$WORK/store-$mode" \
		--inbox-capacity 10000000 "$WORK/mnt-$mode" >"$WORK/$mode.log" 2>&1 &
	PIDS+=($!)
done
for _ in $(seq 200); do
	[ -e "$WORK/mnt-sync/README" ] && [ -e "$WORK/mnt-nosync/README" ] && break
	sleep 0.05
done
for mode in sync nosync; do
	for w in 1 2 3 4 5 6 7 8; do mkdir "$WORK/mnt-$mode/agents/w$w"; done
	mkdir "$WORK/mnt-$mode/agents/bob"
done

redis_rate() { tr '\r' '\n' | sed -n 's/^LPUSH: \([0-9.]*\) requests per second.*/\1/p' | tail -1; }
busfs_round() { # busfs_round MODE outbox|send WRITERS
	local r path=outbox/bob
	[ "$2" = send ] && path=send
	r=$("$OUT/client" "$2-procs" "$3" "$WORK/mnt-$1/agents/w%d/$path" "$N" | rate)
	find "$WORK/mnt-$1/agents/bob/inbox" -maxdepth 1 -type f -delete
	echo "$r"
}

declare -A R
for r in $(seq "$ROUNDS"); do
	for w in 1 8; do
		R[outbox_$w]+=" $(busfs_round sync outbox "$w")"
		R[send_$w]+=" $(busfs_round sync send "$w")"
		R[redis_$w]+=" $("$REDIS_BENCH" -p "$PORT" -c "$w" -n "$N" -P 1 -d 200 -t lpush -q | redis_rate)"
		R[nosync_$w]+=" $(busfs_round nosync send "$w")"
	done
	log "durable: round $r/$ROUNDS: 1 writer busfs ${R[outbox_1]##* } / ${R[send_1]##* } redis ${R[redis_1]##* }; 8 writers busfs ${R[outbox_8]##* } / ${R[send_8]##* } redis ${R[redis_8]##* } sends/s"
done

printf '\nsends that survive a power cut: busfs --sync vs Redis appendfsync always, on %s (%s);\n' "$BASE" "$FSTYPE"
printf 'medians of %d interleaved rounds of %d sends of 200 bytes, each waiting for its answer (spread)\n\n' "$ROUNDS" "$N"
printf '| writers | busfs --sync, outbox/B | busfs --sync, send fd | Redis appendfsync always | send fd / Redis | busfs --no-sync, send fd (reference) |\n|---|---|---|---|---|---|\n'
for w in 1 8; do
	printf '| %d | %.0f sends/s (%s) | %.0f sends/s (%s) | %.0f sends/s (%s) | %.2fx | %.0f sends/s (%s) |\n' "$w" \
		"$(M "outbox_$w")" "$(S "outbox_$w" %.0f)" "$(M "send_$w")" "$(S "send_$w" %.0f)" \
		"$(M "redis_$w")" "$(S "redis_$w" %.0f)" \
		"$(awk -v a="$(M "send_$w")" -v b="$(M "redis_$w")" 'BEGIN { print a / b }')" \
		"$(M "nosync_$w")" "$(S "nosync_$w" %.0f)"
done
for mode in sync nosync; do fusermount3 -u "$WORK/mnt-$mode" 2>/dev/null || true; done
sleep 0.5
grep -h -- 'fdatasyncs answered' "$WORK/sync.log" | sed 's/^busfs: /busfs: /' || true

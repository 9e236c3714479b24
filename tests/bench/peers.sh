#!/usr/bin/env bash
# peers.sh BUSFS — busfs side by side with the systems users would pick instead, for
# `make bench`: Redis lists and streams (no persistence), a Redis list with
# `appendfsync always`, NATS JetStream, POSIX message queues and Maildir, each running
# the same workloads with 200-byte payloads (out/peers, see peers.c for each system's
# send, receive and acknowledgement):
#
#   W1  1 producer -> 1 consumer, concurrently: N sends, each waiting for its
#       acknowledgement, while the consumer receives one message per call and acks each
#       (busfs: outbox/bob; read of claim + rm of the inflight/ file). msgs/s from the
#       first send to the consumer having acked all N; the producer's send p50/p99.
#   W2  8 producer processes -> 1 consumer, N in all; the consumer counts the distinct
#       (producer, sequence) pairs the payloads carry: a loss, duplicate or message
#       left queued FAILS the run (exit 1). msgs/s, as W1.
#   W3  the best batching each system has, 1 producer, BATCH_N messages, all
#       acknowledged, no consumer: busfs `send` with 1000 records per write(); Redis
#       list one LPUSH of 1000 values; Redis stream 1000 pipelined XADDs at a time;
#       JetStream js_PublishAsync with at most 1000 unacknowledged, then
#       js_PublishAsyncComplete. POSIX mq and Maildir have none: their W1 producer,
#       alone (Maildir) or with a consumer draining (mq: the queue holds only msg_max).
#   W4  SHELL_N sends from one bash loop: busfs `echo x > outbox/bob` (in agents/alice),
#       the same echo into a plain file on /dev/shm (the bare tmpfs loop, the
#       reference) and into bench.sh's null FUSE file system (out/nullfs: the floor
#       of any send through FUSE), `redis-cli -p PORT LPUSH q x`, Maildir `printf x >
#       tmp/$i && mv tmp/$i new/$i`. µs per send and the ratio to the bare tmpfs loop.
#   W5  wake-up: a consumer blocked in its receive (busfs read() of claim, BRPOP,
#       XREADGROUP BLOCK, JetStream NextMsg, mq_receive, poll() of inotify on new/);
#       once it sleeps, the producer sends one message; latency from just before the
#       send to the receive returning with the message (CLOCK_MONOTONIC in shared
#       memory); p50 and p99 of WAKE_N samples.
#
# Round r runs every workload on every system in turn (the order of the systems
# rotates from round to round); the table shows medians of the rounds, the spread
# (min-max), and the ratio of each peer to busfs: peer rate / busfs rate, and busfs
# latency / peer latency, so above 1 the peer is better. Each server (busfs on a store
# in /dev/shm; redis-server; redis-server with appendonly yes, appendfsync always, in a
# directory on BENCH_DURABLE_DIR; nats-server -js with its file store in a temp dir)
# has its own free port or mount and temp dir and is stopped by pid. busfs runs from a
# copy of BUSFS taken at the start. A system whose server is not installed is skipped.
#
# Environment: BENCH_PEERS_N (W1 and W2 messages per round, 4000), BENCH_PEERS_BATCH_N
# (W3, 200000), BENCH_PEERS_SHELL_N (W4 sends per loop, 2000), BENCH_PEERS_SHELL_SECS
# (a W4 loop stops after this long and counts what it did, 15), BENCH_PEERS_WAKE_N (W5
# samples per round, 1000), BENCH_ROUNDS (5), BENCH_DURABLE_DIR (the disk directory of
# the appendfsync always server, /var/tmp), BENCH_TIMEOUT (seconds before one peers run
# counts as hung, 120), BENCH_SKIP (containing "peers": skip).
set -euo pipefail
export LC_ALL=C

BUSFS=${1:?usage: peers.sh BUSFS}
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$HERE/out
PEERS=$OUT/peers
N=${BENCH_PEERS_N:-4000}
BATCH_N=${BENCH_PEERS_BATCH_N:-200000}
SHELL_N=${BENCH_PEERS_SHELL_N:-2000}
SHELL_SECS=${BENCH_PEERS_SHELL_SECS:-15}
WAKE_N=${BENCH_PEERS_WAKE_N:-1000}
ROUNDS=${BENCH_ROUNDS:-5}
DDIR=${BENCH_DURABLE_DIR:-/var/tmp}
TMO=${BENCH_TIMEOUT:-120}
PRODUCERS=8 # W2
BATCH=1000  # W3: records per write, values per LPUSH, XADDs per pipeline, publishes in flight
log() { printf '%s\n' "$*" >&2; }
# shellcheck source=lib.sh
. "$HERE/lib.sh"

SKIP=" ${BENCH_SKIP:-} "
SKIP=${SKIP//,/ }
if [[ $SKIP == *" peers "* ]]; then
	log "peers: skipped (BENCH_SKIP)"
	exit 0
fi
for v in N BATCH_N SHELL_N SHELL_SECS WAKE_N ROUNDS TMO; do
	case ${!v} in
	'' | *[!0-9]* | 0) log "peers: $v must be a positive integer (got '${!v}')"; exit 2 ;;
	esac
done
[ -x "$PEERS" ] || { log "peers: $PEERS is missing (make -C tests/bench build)"; exit 1; }
[ -x "$BUSFS" ] || { log "peers: $BUSFS is not an executable"; exit 1; }

WORK=$(mktemp -d /tmp/busfs-bench-peers-XXXXXX)
SHM=$(mktemp -d /dev/shm/busfs-bench-peers-XXXXXX)
DUR=
MQ=/busfs-bench-peers-$$
PIDS=()
declare -A BPID # busfs mounts: name -> pid
cleanup() {
	local m
	for m in "${!BPID[@]}"; do
		fusermount3 -u "$WORK/$m" 2>/dev/null || fusermount3 -uz "$WORK/$m" 2>/dev/null || true
	done
	for p in "${BPID[@]}" "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${BPID[@]}" "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	"$PEERS" mq-unlink "$MQ" 2>/dev/null || true
	rm -rf "$WORK" "$SHM"
	[ -z "$DUR" ] || rm -rf "$DUR"
}
trap cleanup EXIT
cp "$BUSFS" "$WORK/busfs"

# ---------- servers ----------

PORTS=" "
port() { # a free port not handed out before
	local p
	while :; do
		p=$(free_port)
		[[ $PORTS == *" $p "* ]] || break
	done
	PORTS+="$p "
	echo "$p"
}

# busfs NAME: a fresh busfs (empty store in $SHM) mounted at $WORK/NAME, with agents
# alice and bob.
start_busfs() {
	rm -rf "${SHM:?}/store-$1"
	mkdir -p "$WORK/$1"
	"$WORK/busfs" -f --store "$SHM/store-$1" --inbox-capacity 1000000 "$WORK/$1" \
		>>"$WORK/busfs-$1.log" 2>&1 &
	BPID[$1]=$!
	for _ in $(seq 200); do [ -e "$WORK/$1/README" ] && break; sleep 0.05; done
	[ -e "$WORK/$1/README" ] || { log "peers: busfs did not mount ($WORK/busfs-$1.log)"; exit 1; }
	mkdir "$WORK/$1/agents/alice" "$WORK/$1/agents/bob"
}
stop_busfs() {
	local p=${BPID[$1]}
	fusermount3 -u "$WORK/$1" 2>/dev/null || kill "$p" 2>/dev/null || true
	for _ in $(seq 200); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
	kill -9 "$p" 2>/dev/null || true
	wait "$p" 2>/dev/null || true
	unset "BPID[$1]"
	fusermount3 -uz "$WORK/$1" 2>/dev/null || true
}

# The systems (rows) that run, with out/peers's name for each and its target.
SYSTEMS=(busfs)
declare -A PSYS TGT
PSYS[busfs]=busfs
TGT[busfs]=$WORK/main
start_busfs main

REDIS=$(command -v redis-server || true)
REDIS_CLI=$(command -v redis-cli || true)
if [ -z "$REDIS" ] || [ -z "$REDIS_CLI" ]; then
	log "peers: redis-server is not installed (make bench installs it): Redis rows skipped"
else
	RPORT=$(port)
	mkdir -p "$WORK/redis"
	"$REDIS" --port "$RPORT" --bind 127.0.0.1 --dir "$WORK/redis" --save "" --appendonly no \
		--daemonize no --logfile "$WORK/redis.log" &
	PIDS+=($!)
	redis_up "$REDIS_CLI" "$RPORT" || { log "peers: redis-server on port $RPORT did not start"; exit 1; }
	SYSTEMS+=(redis-list redis-stream)
	PSYS[redis-list]=redis-list
	TGT[redis-list]=$RPORT
	PSYS[redis-stream]=redis-stream
	TGT[redis-stream]=$RPORT
	DFS=$(findmnt -no FSTYPE --target "$DDIR" 2>/dev/null || stat -f -c %T "$DDIR" 2>/dev/null ||
		echo missing)
	if [ "$DFS" = tmpfs ] || [ "$DFS" = ramfs ] || [ "$DFS" = missing ]; then
		log "peers: BENCH_DURABLE_DIR=$DDIR is $DFS, not a disk: the appendfsync always row is skipped"
	else
		DUR=$(mktemp -d "$DDIR/busfs-bench-peers-XXXXXX")
		APORT=$(port)
		"$REDIS" --port "$APORT" --bind 127.0.0.1 --dir "$DUR" --appendonly yes \
			--appendfsync always --save "" --daemonize no --logfile "$WORK/redis-aof.log" &
		PIDS+=($!)
		redis_up "$REDIS_CLI" "$APORT" || { log "peers: redis-server on port $APORT did not start"; exit 1; }
		SYSTEMS+=(redis-aof)
		PSYS[redis-aof]=redis-list
		TGT[redis-aof]=$APORT
	fi
fi

NATS_SERVER=$(command -v nats-server || true)
if [ -z "$NATS_SERVER" ]; then
	log "peers: nats-server is not installed (make deps-test installs it): JetStream row skipped"
else
	JPORT=$(port)
	JHPORT=$(port)
	"$NATS_SERVER" -js -a 127.0.0.1 -p "$JPORT" -m "$JHPORT" -sd "$WORK/js" \
		>"$WORK/nats.log" 2>&1 &
	PIDS+=($!)
	for _ in $(seq 300); do healthy "$JHPORT" 2>/dev/null && break; sleep 0.1; done
	healthy "$JHPORT" 2>/dev/null || { log "peers: nats-server did not start ($WORK/nats.log)"; exit 1; }
	SYSTEMS+=(js)
	PSYS[js]=js
	TGT[js]=nats://127.0.0.1:$JPORT
fi

if PEERS_TIMEOUT=20 timeout 30 "$PEERS" flow mq "$MQ" 8 1 >/dev/null 2>"$WORK/mq.err"; then
	SYSTEMS+=(mq)
	PSYS[mq]=mq
	TGT[mq]=$MQ
else
	log "peers: POSIX message queues do not work here ($(head -1 "$WORK/mq.err")): mq row skipped"
fi
MQ_MAX=$(cat /proc/sys/fs/mqueue/msg_max 2>/dev/null || echo 10)

SYSTEMS+=(maildir)
PSYS[maildir]=maildir
TGT[maildir]=$SHM/maildir

# The FUSE floor of W4: bench.sh's null file system (out/nullfs), whose msg answers
# the requests of an outbox/B send at once and keeps nothing.
NULLFS=$OUT/nullfs
if [ -x "$NULLFS" ]; then
	mkdir -p "$WORK/null"
	"$NULLFS" -f "$WORK/null" >"$WORK/nullfs.log" 2>&1 &
	BPID[null]=$!
	for _ in $(seq 200); do mountpoint -q "$WORK/null" && break; sleep 0.05; done
	mountpoint -q "$WORK/null" || { log "peers: nullfs did not mount ($WORK/nullfs.log)"; exit 1; }
fi

# ---------- runs ----------

# One run of out/peers: its result line. A failure (a wrong count: "FAIL") ends the
# script with status 1.
peers() {
	local out
	if ! out=$(PEERS_TIMEOUT=$TMO timeout -k 5 $((TMO + 10)) "$PEERS" "$@"); then
		log "peers: FAILED: out/peers $*"
		return 1
	fi
	echo "$out"
}
pair() { # pair PREFIX: "<p50> <p99>" of a result line on stdin, after PREFIX
	sed -n "s/.*$1p50 \([0-9.]*\) us, p99 \([0-9.]*\) us.*/\1 \2/p"
}

# shell_loop KIND TARGET N: N sends from this bash, in chunks of 100 with a look at the
# clock between chunks (a loop ends after SHELL_SECS); prints "<us per send> <sends>".
shell_loop() {
	local kind=$1 tgt=$2 n=$3 i=0 j t0 t1 stop
	t0=${EPOCHREALTIME/./}
	stop=$((t0 + SHELL_SECS * 1000000))
	while ((i < n)) && ((${EPOCHREALTIME/./} < stop)); do
		case $kind in
		echo)
			for ((j = 0; j < 100 && i < n; j++, i++)); do echo x >"$tgt" || return 1; done ;;
		redis)
			for ((j = 0; j < 100 && i < n; j++, i++)); do
				"$REDIS_CLI" -p "$tgt" LPUSH peers:shell x >/dev/null || return 1
			done ;;
		maildir)
			for ((j = 0; j < 100 && i < n; j++, i++)); do
				printf x >"tmp/$i" && mv "tmp/$i" "new/$i" || return 1
			done ;;
		esac
	done
	t1=${EPOCHREALTIME/./}
	awk -v d=$((t1 - t0)) -v n="$i" 'BEGIN { printf "%.2f %d\n", d / n, n }'
}
shell_run() { # shell_run SYSTEM: W4 on it, "<us per send>"
	local res
	case $1 in
	tmpfs) res=$(cd "$SHM" && shell_loop echo null-target "$SHELL_N") ;;
	nullfs) res=$(cd "$WORK/null" && shell_loop echo msg "$SHELL_N") ;;
	busfs) res=$(cd "$WORK/sink/agents/alice" && shell_loop echo outbox/bob "$SHELL_N") ;;
	redis-list)
		res=$(shell_loop redis "$RPORT" "$SHELL_N")
		"$REDIS_CLI" -p "$RPORT" DEL peers:shell >/dev/null ;;
	maildir)
		rm -rf "$SHM/maildir-shell"
		mkdir -p "$SHM/maildir-shell/tmp" "$SHM/maildir-shell/new" "$SHM/maildir-shell/cur"
		res=$(cd "$SHM/maildir-shell" && shell_loop maildir . "$SHELL_N")
		rm -rf "$SHM/maildir-shell" ;;
	esac
	[ -n "$res" ] || { log "peers: FAILED: the bash loop of W4 on $1"; return 1; }
	[ "${res#* }" = "$SHELL_N" ] ||
		log "peers: W4 $1: the loop stopped after ${res#* } sends ($SHELL_SECS s, BENCH_PEERS_SHELL_SECS)"
	echo "${res% *}"
}
SHELL_SYSTEMS=(tmpfs busfs)
[ -z "${BPID[null]:-}" ] || SHELL_SYSTEMS+=(nullfs)
[ -z "${TGT[redis-list]:-}" ] || SHELL_SYSTEMS+=(redis-list)
SHELL_SYSTEMS+=(maildir)

rotate() { # rotate K WORDS...: the words from the K-th on, then the first K
	local k=$1
	shift
	local a=("$@") j
	for ((j = 0; j < ${#a[@]}; j++)); do echo "${a[(j + k) % ${#a[@]}]}"; done
}

log "peers: ${SYSTEMS[*]}; $ROUNDS rounds of W1/W2 $N msgs, W3 $BATCH_N msgs, W4 $SHELL_N sends, W5 $WAKE_N wakes"
declare -A R
for r in $(seq "$ROUNDS"); do
	mapfile -t ORDER < <(rotate "$((r - 1))" "${SYSTEMS[@]}")
	for s in "${ORDER[@]}"; do
		line=$(peers flow "${PSYS[$s]}" "${TGT[$s]}" "$N" 1)
		R[w1_$s]+=" $(rate <<<"$line")"
		read -r a b < <(pair "send " <<<"$line") || { log "peers: no latencies in: $line"; exit 1; }
		R[w1p50_$s]+=" $a"
		R[w1p99_$s]+=" $b"
	done
	for s in "${ORDER[@]}"; do
		line=$(peers flow "${PSYS[$s]}" "${TGT[$s]}" "$N" "$PRODUCERS")
		R[w2_$s]+=" $(rate <<<"$line")"
	done
	# W3 leaves BATCH_N messages pending: busfs's go to a fresh mount, removed after.
	start_busfs sink
	for s in "${ORDER[@]}"; do
		tgt=${TGT[$s]}
		case $s in
		busfs) tgt=$WORK/sink ;;
		maildir) tgt=$SHM/maildir-batch ;;
		esac
		line=$(peers batch "${PSYS[$s]}" "$tgt" "$BATCH_N" "$BATCH")
		R[w3_$s]+=" $(rate <<<"$line")"
		[ "$s" != maildir ] || rm -rf "$SHM/maildir-batch"
	done
	stop_busfs sink
	start_busfs sink
	mapfile -t SORDER < <(rotate "$((r - 1))" "${SHELL_SYSTEMS[@]}")
	for s in "${SORDER[@]}"; do
		R[w4_$s]+=" $(shell_run "$s")"
	done
	stop_busfs sink
	for s in "${ORDER[@]}"; do
		line=$(peers wake "${PSYS[$s]}" "${TGT[$s]}" "$WAKE_N")
		read -r a b < <(pair "wakes, " <<<"$line") || { log "peers: no latencies in: $line"; exit 1; }
		R[w5p50_$s]+=" $a"
		R[w5p99_$s]+=" $b"
	done
	msg="peers: round $r/$ROUNDS:"
	for s in "${SYSTEMS[@]}"; do
		msg+=" $s ${R[w1_$s]##* }/${R[w2_$s]##* }/${R[w3_$s]##* } msgs/s wake ${R[w5p50_$s]##* } us;"
	done
	log "$msg W4 busfs ${R[w4_busfs]##* } us, tmpfs ${R[w4_tmpfs]##* } us"
done

# ---------- the table ----------

# num X: X with thousands separators, no decimals from 100 up, else one.
num() {
	awk -v x="$1" 'BEGIN {
		s = sprintf(x >= 100 ? "%.0f" : "%.1f", x); i = index(s, ".")
		ip = i ? substr(s, 1, i - 1) : s; fp = i ? substr(s, i) : ""
		while (length(ip) > 3) { fp = "," substr(ip, length(ip) - 2) fp; ip = substr(ip, 1, length(ip) - 3) }
		print ip fp }'
}
spr() { # spr KEY: "lo-hi" of R[KEY], each through num
	local lo hi
	read -r lo hi < <(echo "${R[$1]}" | tr ' ' '\n' | grep . | sort -g | sed -n '1p;$p' | tr '\n' ' ')
	printf '%s-%s' "$(num "$lo")" "$(num "${hi:-$lo}")"
}
ratio() { # ratio A B: A / B, e.g. "1.23x"
	awk -v a="$1" -v b="$2" 'BEGIN { if (b <= 0) { print "-"; exit } r = a / b
		printf(r >= 100 ? "%.0fx" : r >= 10 ? "%.1fx" : "%.2fx", r) }'
}
rate_cell() { # rate_cell KEY SYSTEM: median (spread), this / busfs
	printf '%s/s (%s) %s' "$(num "$(M "$1_$2")")" "$(spr "$1_$2")" \
		"$(ratio "$(M "$1_$2")" "$(M "$1_busfs")")"
}
lat_cell() { # lat_cell KEY SYSTEM: p50 / p99 medians (p50 spread), busfs p50 / this p50
	printf '%s / %s µs (%s) %s' "$(num "$(M "$1p50_$2")")" "$(num "$(M "$1p99_$2")")" \
		"$(spr "$1p50_$2")" "$(ratio "$(M "$1p50_busfs")" "$(M "$1p50_$2")")"
}
shell_cell() { # shell_cell SYSTEM: median (spread), this / tmpfs, busfs / this
	if [ -z "${R[w4_$1]:-}" ]; then
		printf 'not run'
		return
	fi
	printf '%s µs (%s) = %s tmpfs; %s' "$(num "$(M "w4_$1")")" "$(spr "w4_$1")" \
		"$(ratio "$(M "w4_$1")" "$(M w4_tmpfs)")" "$(ratio "$(M w4_busfs)" "$(M "w4_$1")")"
}
declare -A LABEL ACK
LABEL[busfs]="busfs (store on /dev/shm)"
LABEL[redis-list]="Redis 7 list: LPUSH / BRPOP"
LABEL[redis-stream]="Redis 7 stream: XADD / XREADGROUP + XACK"
LABEL[redis-aof]="Redis 7 list, appendonly yes, appendfsync always ($DDIR, ${DFS:-})"
LABEL[js]="NATS JetStream 1 server, file storage, R1 (store in /tmp)"
LABEL[mq]="POSIX mq (mq_maxmsg $MQ_MAX = msg_max)"
LABEL[maildir]="Maildir on /dev/shm"
ACK[busfs]="in the store (tmpfs): survives kill -9, not a reboot"
ACK[redis-list]="memory only (--save '', no AOF): kill -9 loses it"
ACK[redis-stream]="memory only (--save '', no AOF): kill -9 loses it"
ACK[redis-aof]="fdatasync of the AOF before the reply: survives a power cut"
ACK[js]="written to its file, not synced (sync_interval 2 min): survives kill -9, not a power cut"
ACK[mq]="kernel memory: survives kill -9 of both processes, not a reboot"
ACK[maildir]="renamed into new/ on tmpfs: survives kill -9, not a reboot"

printf '\nbusfs against its peers, 200-byte messages; medians of %d interleaved rounds (spread min-max),\n' "$ROUNDS"
printf 'then the ratio to busfs: peer rate / busfs rate, busfs latency / peer latency (above 1: the peer is better)\n\n'
printf '| system | acknowledged means | W1 1->1 msgs/s | W1 send p50 / p99 | W2 %d->1 msgs/s | W3 batched msgs/s | W4 bash loop, per send | W5 wake-up p50 / p99 |\n' "$PRODUCERS"
printf '|---|---|---|---|---|---|---|---|\n'
for s in "${SYSTEMS[@]}"; do
	printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "${LABEL[$s]}" "${ACK[$s]}" \
		"$(rate_cell w1 "$s")" "$(lat_cell w1 "$s")" "$(rate_cell w2 "$s")" \
		"$(rate_cell w3 "$s")" "$(shell_cell "$s")" "$(lat_cell w5 "$s")"
done
printf '| bare tmpfs: echo x > /dev/shm/FILE | (none: a plain file) | | | | | %s | |\n' "$(shell_cell tmpfs)"
[ -z "${R[w4_nullfs]:-}" ] ||
	printf '| null FUSE file system (the floor): echo x > msg | (none: it keeps nothing) | | | | | %s | |\n' "$(shell_cell nullfs)"
cat <<EOF

W1: $N sends, each waiting for its ack, while one consumer receives one message per call and acks it.
W2: $PRODUCERS producer processes, $N messages in all, each counted exactly once by the consumer.
The consumers: busfs read of claim + rm of its inflight/ file, Redis stream XREADGROUP + XACK and
JetStream NextMsg + AckSync lease then ack (two requests per message); Redis list BRPOP and mq_receive
take the message in one call (nothing comes back if the consumer dies); Maildir readdir + read + unlink.
W3: $BATCH_N messages in batches of $BATCH: busfs records per write() to send, Redis list values per LPUSH,
Redis stream pipelined XADDs, JetStream js_PublishAsync in flight. POSIX mq and Maildir have no
batching: one send at a time, their W1 producer (mq with a consumer draining its $MQ_MAX-message queue,
Maildir alone).
W4: $SHELL_N sends from one bash loop: busfs echo x > outbox/bob, redis-cli LPUSH, Maildir
printf > tmp/N && mv tmp/N new/N, and echo x into the null FUSE file system (its 7 requests
answered at once: the floor of a send through FUSE); Redis stream, JetStream and mq have no command of their own to
loop (not run), and the appendfsync always server is not run (redis-cli's start-up dominates).
W5: $WAKE_N samples per round: just before the send to the blocked receive returning with it.
Latency cells: p50 / p99 medians, the spread of the p50, the ratio of the p50s.
EOF

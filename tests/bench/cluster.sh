#!/usr/bin/env bash
# cluster.sh BUSFS — the cross-node send of `make bench`: busfs --cluster against bare
# NATS JetStream publishes, side by side on one 3-server nats-server cluster on
# loopback (each server its own ports and store dir under a temp dir, stopped by pid).
#
# Two busfs nodes, a and b; alice on a sends to bob@b. Per round, interleaved:
#   js sync      jspub: N x js_Publish of 200 bytes, each waiting for its ack, while
#                `jspub consume` (another process, on any server) fetches and acks them
#   busfs one    client outbox: N x (open + write 200 B + close) of outbox/bob@b; the
#                close returns once JetStream stored the message
#   busfs rec    client batch with 1 record per write: one `send` file kept open, as a
#                NATS client keeps its connection, N x write() of one record to bob@b;
#                each write returns once JetStream stored its record
#   busfs local  client outbox: the same to carol, an agent on node a: what the FUSE
#                side of a send costs without NATS
#   js async     jspub: N x js_PublishAsync, at most BATCH unacknowledged
#   busfs batch  client batch: N records to bob@b, BATCH per write() to `send`; a write
#                returns once JetStream stored all its records
# and, for the busfs rounds, the time until every message is in b's inbox (committed
# on b, then acked to JetStream). Both publish to the same stream, BUSFS (3 replicas,
# file storage), through the same server, with a Nats-Msg-Id per message, and have a
# consumer acking on the other side: "acknowledged" means the same thing on both sides
# (stored on a quorum of the servers).
#
# Environment: BENCH_CLUSTER_N (messages per round, 2000), BENCH_CLUSTER_BATCH (64),
# BENCH_ROUNDS (5), BENCH_SKIP (containing "cluster": skip).
set -euo pipefail

BUSFS=${1:?usage: cluster.sh BUSFS}
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$HERE/out
N=${BENCH_CLUSTER_N:-2000}
BATCH=${BENCH_CLUSTER_BATCH:-64}
ROUNDS=${BENCH_ROUNDS:-5}
log() { printf '%s\n' "$*" >&2; }
# shellcheck source=lib.sh
. "$HERE/lib.sh"

if [[ " ${BENCH_SKIP:-} " == *" cluster "* ]]; then
	log "cluster: skipped (BENCH_SKIP)"
	exit 0
fi
NATS_SERVER=$(command -v nats-server || true)
if [ -z "$NATS_SERVER" ]; then
	log "cluster: nats-server is not installed (make deps-test installs it): skipped"
	exit 0
fi

WORK=$(mktemp -d /tmp/busfs-bench-cluster-XXXXXX)
# The nodes' stores on tmpfs, as the default store is (no --sync): JetStream's file
# storage does not fsync each message either (sync_interval, 2 min by default).
SHM=$(mktemp -d /dev/shm/busfs-bench-cluster-XXXXXX)
PIDS=()
cleanup() {
	for m in "$WORK/ma" "$WORK/mb"; do
		fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null || true
	done
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$WORK" "$SHM"
}
trap cleanup EXIT

# Three free loopback ports per server.
declare -a CP RP HP
for i in 0 1 2; do CP[i]=$(free_port); RP[i]=$(free_port); HP[i]=$(free_port); done
URLS="nats://127.0.0.1:${CP[0]},nats://127.0.0.1:${CP[1]},nats://127.0.0.1:${CP[2]}"
# The sending sides, node a and jspub, both talk to server 0: which server a client
# picks from a list is random, and one that is not the stream's leader adds a hop, so
# with the list each side would draw its own distance from the leader.
SENDER_URL="nats://127.0.0.1:${CP[0]}"
for i in 0 1 2; do
	cat >"$WORK/n$i.conf" <<EOF
server_name: n$i
listen: 127.0.0.1:${CP[i]}
http: 127.0.0.1:${HP[i]}
jetstream { store_dir: "$WORK/js$i" }
cluster {
  name: busfs-bench
  listen: 127.0.0.1:${RP[i]}
  routes: [nats-route://127.0.0.1:${RP[0]}, nats-route://127.0.0.1:${RP[1]}, nats-route://127.0.0.1:${RP[2]}]
}
EOF
	"$NATS_SERVER" -c "$WORK/n$i.conf" >"$WORK/n$i.log" 2>&1 &
	PIDS+=($!)
done
for i in 0 1 2; do
	for _ in $(seq 300); do healthy "${HP[i]}" 2>/dev/null && break; sleep 0.1; done
	healthy "${HP[i]}" 2>/dev/null || { log "cluster: nats-server $i did not start ($WORK/n$i.log)"; exit 1; }
done

mkdir -p "$WORK/ma" "$WORK/mb"
"$BUSFS" -f --store "$SHM/sa" --cluster "$SENDER_URL" --node a --inbox-capacity 1000000 \
	"$WORK/ma" >"$WORK/a.log" 2>&1 &
PIDS+=($!)
"$BUSFS" -f --store "$SHM/sb" --cluster "$URLS" --node b --inbox-capacity 1000000 \
	"$WORK/mb" >"$WORK/b.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 200); do [ -e "$WORK/ma/README" ] && [ -e "$WORK/mb/README" ] && break; sleep 0.05; done
mkdir "$WORK/ma/agents/alice" "$WORK/ma/agents/carol" "$WORK/mb/agents/bob"
for _ in $(seq 200); do [ -e "$WORK/ma/agents/bob@b" ] && break; sleep 0.1; done
[ -e "$WORK/ma/agents/bob@b" ] || { log "cluster: a never learned bob@b ($WORK/a.log)"; exit 1; }

# The bare side's consumer, on the other side as node b is to busfs: it fetches and
# acks what jspub publishes, so JetStream does the same work per message for both.
"$OUT/jspub" "$URLS" consume >"$WORK/consumer.out" 2>"$WORK/consumer.err" &
PIDS+=($!)

now() { date +%s.%N; }
# Waits until b's inbox holds WANT files; prints the seconds since START.
delivered() { # delivered WANT START
	local n
	for _ in $(seq 6000); do
		n=$(find "$WORK/mb/agents/bob/inbox" -maxdepth 1 -type f | wc -l)
		[ "$n" -ge "$1" ] && break
		sleep 0.01
	done
	awk -v s="$2" -v e="$(now)" 'BEGIN { printf "%.3f", e - s }'
}
clear_inbox() { find "$WORK/mb/agents/bob/inbox" -maxdepth 1 -type f -delete; }

declare -A R
for r in $(seq "$ROUNDS"); do
	R[js_sync]+=" $("$OUT/jspub" "$SENDER_URL" sync "$N" | rate)"
	t0=$(now)
	R[busfs_one]+=" $("$OUT/client" outbox "$WORK/ma/agents/alice/outbox/bob@b" "$N" | rate)"
	s=$(delivered "$N" "$t0")
	R[busfs_one_e2e]+=" $(awk -v n="$N" -v s="$s" 'BEGIN { printf "%.0f", n / s }')"
	clear_inbox
	t0=$(now)
	R[busfs_rec]+=" $("$OUT/client" batch "$WORK/ma/agents/alice/send" 1 "$N" bob@b | rate)"
	delivered "$N" "$t0" >/dev/null
	clear_inbox
	R[busfs_local]+=" $("$OUT/client" outbox "$WORK/ma/agents/alice/outbox/carol" "$N" | rate)"
	find "$WORK/ma/agents/carol/inbox" -maxdepth 1 -type f -delete
	R[js_async]+=" $("$OUT/jspub" "$SENDER_URL" async "$N" "$BATCH" | rate)"
	t0=$(now)
	R[busfs_batch]+=" $("$OUT/client" batch "$WORK/ma/agents/alice/send" "$BATCH" "$N" bob@b | rate)"
	s=$(delivered "$N" "$t0")
	R[busfs_batch_e2e]+=" $(awk -v n="$N" -v s="$s" 'BEGIN { printf "%.0f", n / s }')"
	clear_inbox
	log "cluster: round $r/$ROUNDS: js sync ${R[js_sync]##* }, busfs one ${R[busfs_one]##* }, busfs rec ${R[busfs_rec]##* }, js async ${R[js_async]##* }, busfs batch ${R[busfs_batch]##* } msgs/s"
done

us() { awk -v r="$1" 'BEGIN { printf "%.0f", 1e6 / r }'; }

printf '\ncross-node send: busfs --cluster vs bare NATS JetStream, 3 servers on loopback, R3,\n'
printf 'file storage; medians of %d interleaved rounds of %d messages (spread in brackets)\n\n' "$ROUNDS" "$N"
printf '| workload | busfs | bare JetStream | busfs / bare |\n|---|---|---|---|\n'
printf '| one send at a time, each waiting for its ack | %s us/send (%s msgs/s) | %s us/publish (js_Publish; %s msgs/s) | %.2fx latency |\n' \
	"$(us "$(M busfs_one)")" "$(S busfs_one)" "$(us "$(M js_sync)")" "$(S js_sync)" \
	"$(awk -v a="$(M js_sync)" -v b="$(M busfs_one)" 'BEGIN { print a / b }')"
printf '| one record per write() to a send file kept open, each waiting for its ack | %s us/send (%s msgs/s) | %s us/publish (js_Publish) | %.2fx latency |\n' \
	"$(us "$(M busfs_rec)")" "$(S busfs_rec)" "$(us "$(M js_sync)")" \
	"$(awk -v a="$(M js_sync)" -v b="$(M busfs_rec)" 'BEGIN { print a / b }')"
printf '| the same send to an agent on node a itself (no NATS) | %s us/send (%s msgs/s) | | |\n' \
	"$(us "$(M busfs_local)")" "$(S busfs_local)"
printf '| batched: %d records per write / %d publishes in flight | %s msgs/s (%s) | %s msgs/s (js_PublishAsync; %s) | %.2fx throughput |\n' \
	"$BATCH" "$BATCH" "$(M busfs_batch)" "$(S busfs_batch)" "$(M js_async)" "$(S js_async)" \
	"$(awk -v a="$(M busfs_batch)" -v b="$(M js_async)" 'BEGIN { print a / b }')"
printf '| into the inbox on the other node (one at a time / batched) | %s / %s msgs/s | | |\n' \
	"$(M busfs_one_e2e)" "$(M busfs_batch_e2e)"

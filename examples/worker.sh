#!/usr/bin/env bash
# worker.sh — an agent loop: register, report health, wait for messages on `next`,
# handle, acknowledge, record a metric. A background heartbeat (`touch health`) keeps
# the agent from turning stale while it waits.
# Usage: worker.sh BUS_DIR AGENT_NAME [HEARTBEAT_SECONDS]
#        (ends when the agent is drained and its inbox empty: echo drain > .../ctl)
set -u
bus=${1:?usage: worker.sh BUS_DIR AGENT [HEARTBEAT_SECONDS]}
me=${2:?usage: worker.sh BUS_DIR AGENT [HEARTBEAT_SECONDS]}
beat=${3:-10}
dir="$bus/agents/$me"

mkdir "$dir" 2>/dev/null || [ -d "$dir" ] || { echo "cannot register $me" >&2; exit 1; }
echo "healthy waiting for work" > "$dir/health" || exit 1

while sleep "$beat"; do touch "$dir/health" || break; done &
heartbeat=$!
trap 'kill $heartbeat 2>/dev/null' EXIT

handled=0
while msg=$(cat "$dir/next") && [ -n "$msg" ]; do
	start=$(date +%s%N)
	id=$(jq -r .msg_id <<<"$msg")
	from=$(jq -r .from <<<"$msg")
	echo "$me: got $(jq -c .payload <<<"$msg") from $from"
	rm "$dir/inbox/"*"-$id.json" || exit 1     # consume it (or: echo "ack $id" > ctl)
	handled=$((handled + 1))
	echo "task.ms $(( ($(date +%s%N) - start) / 1000000 )) ms from=$from" >> "$dir/metrics"
	echo "{\"status\":\"healthy\",\"reason\":\"working\",\"handled\":$handled}" > "$dir/health"
done
echo "degraded drained after $handled message(s)" > "$dir/health"
echo "$me: drained after $handled message(s)"

#!/usr/bin/env bash
# worker.sh — an agent loop: register, wait for messages on `next`, handle, acknowledge.
# Usage: worker.sh BUS_DIR AGENT_NAME   (ends when the agent is drained and its inbox empty)
set -u
bus=${1:?usage: worker.sh BUS_DIR AGENT}
me=${2:?usage: worker.sh BUS_DIR AGENT}
dir="$bus/agents/$me"

mkdir "$dir" 2>/dev/null || [ -d "$dir" ] || { echo "cannot register $me" >&2; exit 1; }

handled=0
while msg=$(cat "$dir/next") && [ -n "$msg" ]; do
	id=$(jq -r .msg_id <<<"$msg")
	from=$(jq -r .from <<<"$msg")
	echo "$me: got $(jq -c .payload <<<"$msg") from $from"
	echo "ack $id" > "$dir/ctl" || exit 1
	handled=$((handled + 1))
done
echo "$me: drained after $handled message(s)"

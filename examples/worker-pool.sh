#!/usr/bin/env bash
# worker-pool.sh — N workers that share one agent's inbox with leases: each claims a
# message (`cat claim`), runs COMMAND with the payload on stdin, and acks it (`rm` of
# its inflight/ file) when COMMAND succeeds, or gives it back (`nak`) when it fails.
# While COMMAND runs, the worker renews its lease (`touch` of the inflight/ file)
# every few seconds. A worker that dies (kill -9, a crash, a reboot of its host)
# holds its message only until the lease ends: then another worker gets it, with
# "delivery" one higher; after --max-deliver deliveries it is a dead letter in dead/.
#
# Usage: worker-pool.sh BUS_DIR AGENT WORKERS COMMAND [ARG...]
#   e.g. worker-pool.sh ./bus jobs 4 sh -c 'jq -e .task >/dev/null && sleep 1'
# Ends when the agent is drained and has nothing left to claim:
#   echo drain > BUS_DIR/agents/AGENT/ctl
set -u
bus=${1:?usage: worker-pool.sh BUS_DIR AGENT WORKERS COMMAND [ARG...]}
agent=${2:?usage: worker-pool.sh BUS_DIR AGENT WORKERS COMMAND [ARG...]}
workers=${3:?usage: worker-pool.sh BUS_DIR AGENT WORKERS COMMAND [ARG...]}
shift 3
[ $# -gt 0 ] || { echo "worker-pool.sh: no COMMAND" >&2; exit 2; }
dir="$bus/agents/$agent"
renew=${RENEW_SECONDS:-5}   # keep it well under the server's --lease

mkdir "$dir" 2>/dev/null || [ -d "$dir" ] || { echo "cannot register $agent" >&2; exit 1; }

worker() {
	local n=$1 done=0 failed=0
	shift
	# An empty claim means: drained and nothing left.
	while lease=$(cat "$dir/claim") && [ -n "$lease" ]; do
		id=$(jq -r .msg_id <<<"$lease")
		token=$(jq -r .lease.token <<<"$lease")
		file=$(jq -r .lease.file <<<"$lease")
		delivery=$(jq -r .lease.delivery <<<"$lease")
		( while sleep "$renew"; do touch "$dir/$file" 2>/dev/null || exit; done ) &
		renewer=$!
		if jq -c .payload <<<"$lease" | "$@"; then
			kill "$renewer" 2>/dev/null
			# ENOENT here: the lease ended meanwhile and another worker has the message.
			rm "$dir/$file" 2>/dev/null && done=$((done + 1))
		else
			kill "$renewer" 2>/dev/null
			echo "worker $n: $id failed (delivery $delivery); giving it back" >&2
			echo "nak $id $token 5" > "$dir/ctl" 2>/dev/null
			failed=$((failed + 1))
		fi
	done
	echo "worker $n: $done done, $failed given back"
}

pids=()
for n in $(seq 1 "$workers"); do
	worker "$n" "$@" &
	pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null' INT TERM
wait "${pids[@]}"

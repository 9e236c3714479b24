#!/usr/bin/env bash
# monitor.sh — watch the health of a whole bus through one file, health/status.
#
# Usage: monitor.sh BUS_DIR --once        print a summary (and the alerts firing); exit 0
#                                         healthy, 1 degraded, 2 unhealthy (stale agents
#                                         count as unhealthy), 3 when the bus cannot be read
#        monitor.sh BUS_DIR [SECONDS]     print a line whenever the bus's status or an
#                                         agent's status changes (every 5 s by default)
#
# Needs jq. Each read of health/status is one consistent snapshot, rendered at open.
set -u
bus=${1:?usage: monitor.sh BUS_DIR [--once | SECONDS]}
mode=${2:-5}

snapshot() { jq -ce . "$bus/health/status" 2>/dev/null; }

summary() {
	jq -r '"bus " + .status
		+ " (" + ([.counts | to_entries[] | select(.value > 0) | "\(.value) \(.key)"]
			  | join(", ") | if . == "" then "no agents" else . end) + ")",
		(.agents | to_entries[] | select(.value.status != "healthy")
		 | "  \(.key): \(.value.status)"
		   + (if .value.reason != "" then " — " + .value.reason else "" end)
		   + (if .value.age_s != null then " (last seen \(.value.age_s) s ago)" else "" end)
		   + (if .value.state == "draining" then " [draining]" else "" end))' <<<"$1"
}

# One line per alert firing now, from alerts/active.json.
alerts() {
	jq -r '.alerts[] | "  alert \(.alert) [\(.severity)] on \(.agent): \(.value) (threshold \(.threshold)) since \(.since)"' \
		"$bus/alerts/active.json" 2>/dev/null
}

if [ "$mode" = --once ]; then
	doc=$(snapshot) || { echo "monitor: cannot read $bus/health/status" >&2; exit 3; }
	summary "$doc"
	alerts
	case $(jq -r .status <<<"$doc") in
	healthy) exit 0 ;;
	degraded) exit 1 ;;
	*) exit 2 ;;
	esac
fi

case $mode in
'' | *[!0-9.]*) echo "monitor: SECONDS must be a number, not '$mode'" >&2; exit 3 ;;
esac

# Follow mode: compare the per-agent statuses with the previous snapshot.
prev=""
while :; do
	if doc=$(snapshot); then
		now=$(jq -c '{status, agents: (.agents | map_values(.status))}' <<<"$doc")
		firing=$(alerts)
		if [ "$now$firing" != "$prev" ]; then
			echo "$(jq -r .timestamp <<<"$doc") $(summary "$doc" | head -1)"
			summary "$doc" | tail -n +2
			[ -z "$firing" ] || echo "$firing"
			prev=$now$firing
		fi
	else
		echo "monitor: cannot read $bus/health/status" >&2
	fi
	sleep "$mode"
done

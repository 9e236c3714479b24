#!/usr/bin/env bash
# prometheus-textfile.sh — let Prometheus scrape busfs through node_exporter's textfile
# collector, which reads every *.prom file of a directory at each scrape. busfs
# renders metrics/busfs.prom when it is opened, so every scrape is current.
#
# Usage: prometheus-textfile.sh BUS_DIR [LISTEN_ADDRESS]      (default 127.0.0.1:9101)
#
# Then: curl -s http://127.0.0.1:9101/metrics | grep ^busfs_
# For a node_exporter that runs as its own user (the Debian service runs as
# `prometheus`), mount busfs with `-o allow_other` so that user may read the file,
# and point the service at it in /etc/default/prometheus-node-exporter:
#   ARGS="--collector.textfile.directory=/path/to/bus/metrics"
set -u
bus=${1:?usage: prometheus-textfile.sh BUS_DIR [LISTEN_ADDRESS]}
addr=${2:-127.0.0.1:9101}
[ -r "$bus/metrics/busfs.prom" ] || { echo "prometheus-textfile.sh: no $bus/metrics/busfs.prom" >&2; exit 1; }
exe=$(command -v prometheus-node-exporter || command -v node_exporter) ||
	{ echo "prometheus-textfile.sh: install prometheus-node-exporter" >&2; exit 1; }
exec "$exe" --collector.disable-defaults --collector.textfile \
	--collector.textfile.directory="$bus/metrics" --web.listen-address="$addr"

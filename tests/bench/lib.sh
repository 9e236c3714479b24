# lib.sh — what the benchmark scripts share (sourced by bench.sh, cluster.sh,
# durable.sh and peers.sh).

# A free loopback port below the ephemeral range.
free_port() {
	local p
	while :; do
		p=$((20000 + RANDOM % 12000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return
		fi
	done
}

# healthy PORT: whether the nats-server monitoring port PORT answers GET /healthz ok.
healthy() {
	local reply
	exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
	printf 'GET /healthz HTTP/1.0\r\n\r\n' >&3
	reply=$(cat <&3)
	exec 3>&-
	[[ $reply == *'"ok"'* ]]
}

# redis_up CLI PORT: whether the redis-server on PORT answers PING within about 10 s
# (CLI: the redis-cli to ask with).
redis_up() {
	for _ in $(seq 100); do
		[ "$(timeout 2 "$1" -p "$2" ping 2>/dev/null)" = PONG ] && return 0
		sleep 0.1
	done
	return 1
}

# The rate of a `client` or `jspub` result line ("<rate> msgs/s (...)").
rate() { sed -n 's/^\([0-9.]*\) msgs\/s.*/\1/p'; }

# The median and the spread ("lo-hi", each printed with FORMAT, default %s) of the
# numbers on stdin, separated by blanks or lines; median exits 1 when there are none.
median() { tr ' ' '\n' | grep . | sort -g | awk '{ a[NR] = $1 } END {
	if (NR == 0) exit 1; if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
spread() { tr ' ' '\n' | grep . | sort -g | awk -v f="${1:-%s}" 'NR == 1 { lo = $1 } { hi = $1 }
	END { printf f "-" f, lo, hi }'; }

# The same of the samples a script keeps in its associative array R, by key.
M() { echo "${R[$1]}" | median; }
S() { echo "${R[$1]}" | spread "${2:-%s}"; }

#!/usr/bin/env bash
# Make a real capture of over 1M packets for benchmarks: nginx and ab (ApacheBench) in two network
# namespaces this script creates, tcpdump on the server's veth. Needs root, nginx-light, apache2-utils,
# tcpdump, iproute2. Usage: bench/make_capture.sh OUT.pcap [REQUESTS]
set -euo pipefail
out=${1:?usage: make_capture.sh OUT.pcap [REQUESTS]}
requests=${2:-160000}
c=rsbench-c; s=rsbench-s; dir=$(mktemp -d)
cleanup() { set +e; [ -n "${td:-}" ] && kill -INT "$td" 2>/dev/null && wait "$td"; [ -f "$dir/nginx.pid" ] && kill "$(cat "$dir/nginx.pid")"; ip netns del $c 2>/dev/null; ip netns del $s 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
ip netns add $c; ip netns add $s
ip link add vc netns $c type veth peer name vs netns $s
ip -n $c addr add 10.97.0.1/24 dev vc; ip -n $s addr add 10.97.0.2/24 dev vs
for ns in $c $s; do ip -n $ns link set lo up; done
ip -n $c link set vc up; ip -n $s link set vs up
ip netns exec $c sysctl -qw net.ipv4.ip_local_port_range="10000 65000" net.ipv4.tcp_tw_reuse=1
cat > "$dir/nginx.conf" <<CONF
worker_processes 1; pid $dir/nginx.pid; error_log $dir/error.log;
events { worker_connections 4096; }
http { access_log off; server { listen 10.97.0.2:80 backlog=4096; location / { return 200 "ok\n"; } } }
CONF
ip netns exec $s nginx -c "$dir/nginx.conf"
ip netns exec $s tcpdump -i vs -s 128 -w "$out" -B 65536 2>"$dir/tcpdump.log" & td=$!
sleep 1
ip netns exec $c ab -q -n "$requests" -c 32 http://10.97.0.2/ > "$dir/ab.log" 2>&1 || { cat "$dir/ab.log"; exit 1; }
sleep 0.5  # the capture ends with its traffic: every connection closed (FIN), so all are classified
kill -INT "$td"; wait "$td" || true; td=
grep -E "packets (captured|dropped)" "$dir/tcpdump.log" >&2 || true
grep -E "Requests per second|Failed" "$dir/ab.log" >&2 || true

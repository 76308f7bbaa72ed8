#!/usr/bin/env bash
# Benchmarks `meshploy proxy` against nginx as reverse proxies to the same upstream, with a
# bare hyper proxy (proxy/examples/bare_hyper.rs: hyper on both sides and nothing else) as a
# baseline for what hyper itself costs here; then the proxy's load time and memory with
# 100,000 routes. Prints the figures; changes nothing
# outside a temporary directory (it installs nginx and wrk from Debian's packages if missing).
#
#   proxy/bench/run.sh [DURATION (default 10s)] [CONNECTIONS (default 64)] [ROUNDS (default 5)]
#
# The two proxies are measured in turn, ROUNDS times, and the medians are compared: on a
# machine where wrk, the upstream and the proxy share two cores, one 10-second run of the same
# proxy varies by about 10%. MESHPLOY_PROXY_ARGS adds arguments to `meshploy proxy` (for
# example `--workers 1`); SKIP_100K=1 skips the 100,000-route part.
set -euo pipefail
cd "$(dirname "$0")/../.."
duration=${1:-10s}
connections=${2:-64}
rounds=${3:-5}
threads=2

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
    echo "installing nginx and wrk from Debian's packages" >&2
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nginx-light wrk >/dev/null
fi
cargo build --release --quiet
cargo build --release --quiet -p meshploy-proxy --example bare_hyper
meshploy=$PWD/target/release/meshploy
bare_hyper=$PWD/target/release/examples/bare_hyper

work=$(mktemp -d)
chmod 755 "$work"   # the embedded PostgreSQL runs as an unprivileged user when this is root
export MESHPLOY_HOME=$work/home
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for conf in upstream proxy; do
        [ -f "$work/$conf.pid" ] && kill "$(cat "$work/$conf.pid")" 2>/dev/null || true
    done
    "$meshploy" db stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
upstream=$(free_port); via_nginx=$(free_port); via_meshploy=$(free_port); admin=$(free_port)
via_bare=$(free_port)

# The upstream is a process of its own (one nginx worker returning a small static body), so
# both proxies reach it over loopback alike. nginx as the proxy is configured as people run it
# in front of an app: HTTP/1.1 and kept-alive upstream connections, one worker per core.
nginx_conf() { # NAME WORKERS SERVER-BLOCK
    cat >"$work/$1.conf" <<CONF
worker_processes $2;
pid $work/$1.pid;
error_log $work/$1-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/$1-body;
    proxy_temp_path $work/$1-proxy;
    upstream app { server 127.0.0.1:$upstream; keepalive 128; }
    $3
}
CONF
    nginx -c "$work/$1.conf" -e "$work/$1-error.log"
}
nginx_conf upstream 1 "server {
        listen 127.0.0.1:$upstream;
        location / { default_type text/plain; return 200 \"hello from the upstream\\n\"; }
    }"
nginx_conf proxy auto "server {
        listen 127.0.0.1:$via_nginx;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Host \$host;
        }
    }"

mkdir -p "$work/manifests"
cat >"$work/manifests/bench.yaml" <<YAML
apiVersion: meshploy.dev/v1
kind: Project
metadata:
  name: bench
---
apiVersion: meshploy.dev/v1
kind: Route
metadata:
  name: app
  project: bench
spec:
  host: bench.local
  upstream: http://127.0.0.1:$upstream
YAML
"$meshploy" apply "$work/manifests" --auto-approve >/dev/null
# shellcheck disable=SC2086 # MESHPLOY_PROXY_ARGS is a list of arguments.
"$meshploy" proxy --listen "127.0.0.1:$via_meshploy" --admin-listen "127.0.0.1:$admin" \
    --allow-upstream 127.0.0.1 ${MESHPLOY_PROXY_ARGS:-} 2>"$work/proxy.log" &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$admin/healthz" >/dev/null && break; sleep 0.1; done
"$bare_hyper" "127.0.0.1:$via_bare" "127.0.0.1:$upstream" &
pids+=($!)

# wrk's figures in common units: requests/s, p50 and p99 in milliseconds.
measure() {
    local out
    out=$(wrk -t"$threads" -c"$connections" -d"$duration" --latency -H "Host: bench.local" "http://127.0.0.1:$1/")
    if echo "$out" | grep -q "Non-2xx"; then echo "error: non-2xx answers through $2:" >&2; echo "$out" >&2; exit 1; fi
    local rps p50 p99
    rps=$(echo "$out" | awk '/^Requests\/sec/ {print $2}')
    p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
    p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
    echo "$rps $(to_ms "$p50") $(to_ms "$p99")"
}
to_ms() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
        else { sub(/s$/, "", v); printf "%.3f", v * 1000 } }'
}

declare -A port=([nginx]=$via_nginx [meshploy]=$via_meshploy [bare-hyper]=$via_bare)
proxies=(nginx meshploy bare-hyper)
for proxy in "${proxies[@]}"; do
    curl -sf --retry 20 --retry-connrefused --retry-delay 0 -H "Host: bench.local" \
        "http://127.0.0.1:${port[$proxy]}/" >/dev/null
done
echo "wrk -t$threads -c$connections -d$duration, $rounds rounds, one upstream (its own nginx worker, static 24-byte body), $(nproc) cores"
# A short warm-up each, then the measured runs in turn, round after round.
for proxy in "${proxies[@]}"; do
    wrk -t"$threads" -c"$connections" -d2s -H "Host: bench.local" "http://127.0.0.1:${port[$proxy]}/" >/dev/null
    : >"$work/$proxy.runs"
done
printf '%-6s %-10s %12s %10s %10s\n' round proxy requests/s "p50 ms" "p99 ms"
for round in $(seq "$rounds"); do
    for proxy in "${proxies[@]}"; do
        figures=$(measure "${port[$proxy]}" "$proxy") || exit 1
        read -r rps p50 p99 <<<"$figures"
        echo "$rps $p50 $p99" >>"$work/$proxy.runs"
        printf '%-6s %-10s %12.0f %10.3f %10.3f\n' "$round" "$proxy" "$rps" "$p50" "$p99"
    done
done
# The median of each column over the rounds.
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for proxy in "${proxies[@]}"; do
    for column in 1 2 3; do
        cut -d' ' -f"$column" "$work/$proxy.runs" | median
    done | paste -sd' ' >"$work/$proxy.median"
    read -r rps p50 p99 <"$work/$proxy.median"
    printf '%-6s %-10s %12.0f %10.3f %10.3f\n' median "$proxy" "$rps" "$p50" "$p99"
done
read -r n_rps _ n_p99 <"$work/nginx.median"
for proxy in meshploy bare-hyper; do
    read -r rps _ p99 <"$work/$proxy.median"
    awk -v who="$proxy" -v a="$rps" -v b="$n_rps" -v c="$p99" -v d="$n_p99" \
        'BEGIN { printf "%s/nginx (medians): requests/s x%.2f, p99 x%.2f\n", who, a / b, c / d }'
done
echo "target for meshploy: requests/s x1.00 or more, p99 x1.00 or less"
for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done

[ "${SKIP_100K:-}" ] && exit 0
# 100,000 routes, applied through the real plan/apply path: 100 files of 1,000 routes.
python3 - "$work/manifests" "$upstream" <<'PY'
import sys
root, port = sys.argv[1], sys.argv[2]
for f in range(100):
    with open(f"{root}/routes{f:03}.yaml", "w") as out:
        out.write("---\n".join(
            f"apiVersion: meshploy.dev/v1\nkind: Route\nmetadata:\n  name: r{i}\n  project: bench\n"
            f"spec:\n  host: r{i}.bench.local\n  upstream: http://127.0.0.1:{port}\n"
            for i in range(f * 1000, f * 1000 + 1000)))
PY
"$meshploy" apply "$work/manifests" --auto-approve --allow-destroy >/dev/null
"$meshploy" proxy --listen "127.0.0.1:$via_meshploy" --admin-listen "127.0.0.1:$admin" \
    --allow-upstream 127.0.0.1 2>"$work/proxy-100k.log" &
pid=$!; pids+=($pid)
for _ in $(seq 600); do curl -sf "http://127.0.0.1:$admin/healthz" >/dev/null && break; sleep 0.1; done
curl -sf -H "Host: r99999.bench.local" "http://127.0.0.1:$via_meshploy/" >/dev/null
wrk -t"$threads" -c"$connections" -d3s -H "Host: r4242.bench.local" "http://127.0.0.1:$via_meshploy/" >/dev/null
loaded=$(grep -o '[0-9]* routes loaded in [0-9]* ms' "$work/proxy-100k.log")
rss=$(awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status")
hwm=$(awk '/^VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status")
echo "100,000 routes: $loaded; resident memory ${rss} MB after serving (peak ${hwm} MB; target under 100 MB)"

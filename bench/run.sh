#!/usr/bin/env bash
# Load benchmark: the direct path, nginx, the floor and Drawbridge in one run, on this machine.
#
#   bench/run.sh                 # full run: 10 s per measurement, 3 repeats
#   DURATION=3 REPEATS=1 IDLE=0 bench/run.sh   # a quick look, without the idle phase
#
# The floor (bench/floor) is the least a reverse proxy on hyper 1 can do, on Drawbridge's
# runtime and allocator: Drawbridge's distance from it is Drawbridge's own work. The same
# floor behind rustls (floor-tls, the crypto provider Drawbridge uses) is the floor of a TLS
# listener, measured beside the full access path; floor-full is that floor checking and
# recording each request as the full path does (token, policies, audit and access lines), the
# least way on the same crates: the floor of the full path. floor-work is the plain floor
# kept busy FLOOR_WORK_NS (500 by default) nanoseconds a request: what that much work of a
# proxy's own costs in this layout, where the proxy shares its CPU with the upstream.
# floor-duties is the plain floor doing what a gateway owes every request on a public route
# (head limits, one valid host, the client's headers screened against Drawbridge's list, a
# path in normal form, forwarding headers and a request id, a request timeout, the response's
# hop-by-hop headers removed, a count), the least way on the same crates: the floor of the
# public route.
# Layout (2 cores): the load generator runs alone on CPU 0; the upstream and the proxy under
# test share CPU 1. The upstream is nginx answering `200 ok` from memory. nginx as a reverse
# proxy uses upstream keep-alive; the proxies log nothing, so the proxying itself is compared.
# The full access path is compared over TLS 1.3: nginx with TLS alone, nginx's full path (an
# RS256 token checked in process by Lua through OpenSSL on every request, limit_req, a
# buffered access log), and a second Drawbridge with TLS, the cached JWT, 100 Cedar policies,
# the access log and the audit trail written to files.
# The same Drawbridge also serves JWT routes (RS256 and ES256, verified-token cache on and
# off), measured like the public route and reported against it, and the cached JWT routes
# again with authorization: 100 Cedar policies over 50 routes, the caller in 20 groups.
# Over TLS (https://localhost), a session-cookie route beside the cached JWT route: a person
# signed in at a real OpenID provider (npm oidc-provider), the session in the embedded store
# (read from the instance's cache between store reads) and, in a second Drawbridge, in Redis
# read on every request (cache_ttl = 0s); and sign-ins started per second (each writes a
# sign-in state to the embedded store).
#   ONLY="drawbridge-jwt-rs256 drawbridge-jwt-rs256-authz" bench/run.sh   # some paths only
# Throughput: wrk at 32 and 256 keep-alive connections, median of the repeats.
# Latency without saturation: hey at a fixed 2,000 requests/s.
# Idle phase (IDLE connections, 10,000 by default): each server holds that many idle
# keep-alive connections (python3 bench/idle.py); its memory per connection, then new clients'
# throughput while they are held, then its memory once they closed.
# CPU µs/request: user + system time of the process serving that path (for the proxies, the
# proxy alone; for direct, the upstream) over the run, divided by the requests it served.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DURATION=${DURATION:-10}
REPEATS=${REPEATS:-3}
RATE=${RATE:-2000}
LOADGEN_CPU=${LOADGEN_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
IDLE=${IDLE:-10000}
ISS="https://bench.invalid/"   # the JWT routes' issuer
UP_PORT=18100; NGINX_PORT=18101; DB_PORT=18102; TLS_PORT=18103
DB2_PORT=18104; TLS2_PORT=18105; REDIS_PORT=18106; FLOOR_PORT=18107
NGINX_TLS_PORT=18108; NGINX_FULL_PORT=18109; FULL_PORT=18110; FLOOR_TLS_PORT=18111
FLOOR_FULL_PORT=18112; FLOOR_WORK_PORT=18113; FLOOR_DUTIES_PORT=18114
FLOOR_WORK_NS=${FLOOR_WORK_NS:-500}

need=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
[ -f /usr/lib/nginx/modules/ngx_http_lua_module.so ] || need+=(libnginx-mod-http-lua)
dpkg -s lua-cjson >/dev/null 2>&1 || need+=(lua-cjson)
command -v wrk >/dev/null || need+=(wrk)
command -v hey >/dev/null || need+=(hey)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
command -v redis-server >/dev/null || need+=(redis-server)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release -p drawbridge -p drawbridge-floor --quiet
# Ten thousand idle connections and more: as many descriptors as the hard limit allows.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(cd crates/drawbridge/tests/js && npm ci --no-audit --no-fund --silent)
WORK=$(mktemp -d)
OUT="$ROOT/bench/results"
mkdir -p "$OUT" "$WORK/logs"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

cat > "$WORK/upstream.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/upstream.pid;
error_log $WORK/logs/upstream.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  server { listen 127.0.0.1:$UP_PORT; location / { return 200 "ok\n"; } }
}
CONF
# One nginx worker serves the plain proxy, TLS alone and the full access path.
cat > "$WORK/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
worker_processes 1;
worker_rlimit_nofile 40000;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/logs/nginx.err warn;
events { worker_connections 20000; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  ssl_protocols TLSv1.3;
  ssl_certificate $WORK/tls.crt;
  ssl_certificate_key $WORK/tls.key;
  lua_package_path "$ROOT/bench/?.lua;;";
  init_by_lua_block { require("nginx-jwt").init("$WORK/rs256.pem", "$ISS", "bench") }
  limit_req_zone \$binary_remote_addr zone=perclient:10m rate=1000000r/s;
  upstream backend { server 127.0.0.1:$UP_PORT; keepalive 256; keepalive_requests 10000000; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
  server {
    listen 127.0.0.1:$NGINX_TLS_PORT ssl;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
  server {
    listen 127.0.0.1:$NGINX_FULL_PORT ssl;
    access_log $WORK/logs/nginx-access.log combined buffer=64k flush=1s;
    location / {
      limit_req zone=perclient burst=1000000 nodelay;
      access_by_lua_block { require("nginx-jwt").access() }
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CONF
# An issuer for the JWT routes: RS256 and ES256 keys, their JWK Set, a token for each.
declare -A TOKEN
while read -r alg token; do TOKEN[$alg]=$token; done < <(node crates/drawbridge/tests/js/mint-jwt.mjs "$WORK/jwks.json" "$ISS" bench)
# The RS256 key as PEM, for nginx's check.
node -e 'const c = require("crypto"); const k = JSON.parse(require("fs").readFileSync(process.argv[1])).keys.find(k => k.kty === "RSA");
process.stdout.write(c.createPublicKey({ key: k, format: "jwk" }).export({ type: "spki", format: "pem" }))' "$WORK/jwks.json" > "$WORK/rs256.pem"
jwt_authenticator() {  # name, algorithm, cache
  printf '[[authenticators]]\nname = "%s"\ntype = "jwt"\nissuer = "%s"\naudiences = ["bench"]\nalgorithms = ["%s"]\njwks_file = "%s"\ncache = %s\nclaims = { groups = "groups", attributes = ["tenant"] }\n\n' "$1" "$ISS" "$2" "$WORK/jwks.json" "$3"
}
jwt_route() {  # name, authenticator, authorize (true: by the policies)
  printf '[[routes]]\nname = "%s"\nprefix = "/%s"\nupstream = "upstream"\nauthenticate = ["%s"]\nauthorize = %s\n\n' "$1" "$1" "$2" "$3"
}
# The policies: two per route over 50 routes (49 the benchmark never calls), 100 in all.
# The measured routes admit the caller by group and tenant, as a real read policy would.
{
  for r in $(seq 0 48); do
    printf 'permit (principal in Group::"g%d", action in Action::"read", resource == Route::"other-%d")\nwhen { principal has tenant && principal.tenant == "t%d" };\n' "$((r * 20))" "$r" "$r"
    printf 'permit (principal in Group::"g%d", action in Action::"write", resource == Route::"other-%d");\n' "$((r * 20 + 7))" "$r"
  done
  printf 'permit (principal in Group::"bench", action in Action::"read", resource in Upstream::"upstream")\nwhen { principal has tenant && principal.tenant == "load" };\n'
  printf 'permit (principal in Group::"writers", action in Action::"write", resource in Upstream::"upstream");\n'
} > "$WORK/policies.cedar"
# TLS on localhost, a throwaway certificate; an OpenID provider people sign in at.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null
printf 'bench-secret\n' > "$WORK/sso.secret"
cat > "$WORK/idp.json" <<JSON
{"clients": [{"client_id": "bench", "client_secret": "bench-secret",
  "redirect_uris": ["https://localhost:$TLS_PORT/.drawbridge/callback", "https://localhost:$TLS2_PORT/.drawbridge/callback"],
  "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"]}],
 "users": {"alice": {"password": "alice-pw", "claims": {"email": "alice@bench.test", "email_verified": true, "groups": ["bench"], "tenant": "load"}}}}
JSON
node crates/drawbridge/tests/js/oidc-idp.mjs "$WORK/idp.json" > "$WORK/idp.out" 2>"$WORK/logs/idp.err" & pids+=($!)
for _ in $(seq 100); do grep -q '^listening' "$WORK/idp.out" 2>/dev/null && break; sleep 0.1; done
IDP="http://127.0.0.1:$(awk '/^listening/ {print $2}' "$WORK/idp.out")"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 & pids+=($!)
tls_part() {  # listener port, [sessions] body
  cat <<TLS
[[listeners]]
name = "bench-tls"
address = "127.0.0.1:$1"
[[listeners.tls.certificates]]
cert = "$WORK/tls.crt"
key = "$WORK/tls.key"

[[authenticators]]
name = "sso"
type = "oidc"
issuer = "$IDP"
client_id = "bench"
client_secret_file = "$WORK/sso.secret"
scopes = ["openid", "email", "groups"]
claims = { groups = "groups", attributes = ["tenant"] }

[sessions]
$2

[[routes]]
name = "tls-jwt"
host = "localhost"
prefix = "/tls-jwt"
upstream = "upstream"
listeners = ["bench-tls"]
authenticate = ["rs256"]
authorize = false

[[routes]]
name = "tls-session"
host = "localhost"
prefix = "/tls-session"
upstream = "upstream"
listeners = ["bench-tls"]
authenticate = ["sso"]
authorize = false
TLS
}
other_routes() {
  for r in $(seq 0 48); do
    printf '[[routes]]\nname = "other-%d"\nprefix = "/other-%d"\nupstream = "upstream"\nauthenticate = ["rs256"]\n\n' "$r" "$r"
  done
}
cat > "$WORK/drawbridge.toml" <<CONF
[server]
access_log = "off"
audit_log = "${AUDIT_LOG:-off}"
watch = false

[[listeners]]
name = "bench"
address = "127.0.0.1:$DB_PORT"
# Room for the idle phase's connections, kept alive as long as nginx keeps them.
limits = { max_connections = 20000, header_read_timeout = "300s", idle_timeout = "300s" }

[[upstreams]]
name = "upstream"
endpoints = ["http://127.0.0.1:$UP_PORT"]
protocol = "http1"
max_idle_connections = 512

[[routes]]
name = "plain"
prefix = "/"
upstream = "upstream"
public = true

[policy]
files = ["$WORK/policies.cedar"]
attributes = { tenant = "String" }
plain_names = ["rs256", "es256"]   # one bench IdP behind two algorithms: the same groups

$(jwt_authenticator rs256 RS256 true)
$(jwt_authenticator rs256-nocache RS256 false)
$(jwt_authenticator es256 ES256 true)
$(jwt_authenticator es256-nocache ES256 false)
$(jwt_route jwt-rs256 rs256 false)
$(jwt_route jwt-rs256-nocache rs256-nocache false)
$(jwt_route jwt-es256 es256 false)
$(jwt_route jwt-es256-nocache es256-nocache false)
$(jwt_route jwt-rs256-authz rs256 true)
$(jwt_route jwt-es256-authz es256 true)
$(other_routes)
CONF
# The full access path: TLS, the cached RS256 JWT, the policies, the access log and the
# audit trail written to files.
cat > "$WORK/drawbridge-full.toml" <<CONF
[server]
access_log = "$WORK/logs/access.jsonl"
audit_log = "$WORK/logs/audit.jsonl"
watch = false

[[listeners]]
name = "full"
address = "127.0.0.1:$FULL_PORT"
[[listeners.tls.certificates]]
cert = "$WORK/tls.crt"
key = "$WORK/tls.key"

[[upstreams]]
name = "upstream"
endpoints = ["http://127.0.0.1:$UP_PORT"]
protocol = "http1"
max_idle_connections = 512

[policy]
files = ["$WORK/policies.cedar"]
attributes = { tenant = "String" }
plain_names = ["rs256"]

$(jwt_authenticator rs256 RS256 true)
$(jwt_route jwt-rs256-authz rs256 true)
$(other_routes)

[[routes]]
name = "public"
prefix = "/public"
upstream = "upstream"
public = true
CONF
# The same proxy twice: sessions in the embedded store, and in Redis read on every request.
cp "$WORK/drawbridge.toml" "$WORK/drawbridge-redis.toml"
tls_part "$TLS_PORT" "path = \"$WORK/sessions.redb\"" >> "$WORK/drawbridge.toml"
sed -i "s/127.0.0.1:$DB_PORT/127.0.0.1:$DB2_PORT/" "$WORK/drawbridge-redis.toml"
tls_part "$TLS2_PORT" "store = \"redis\"
redis_url = \"redis://127.0.0.1:$REDIS_PORT/0\"
cache_ttl = \"0s\"" >> "$WORK/drawbridge-redis.toml"

taskset -c "$SERVER_CPU" "$NGINX" -e "$WORK/logs/upstream.err" -c "$WORK/upstream.conf" & pids+=($!)
taskset -c "$SERVER_CPU" "$NGINX" -e "$WORK/logs/nginx.err" -c "$WORK/nginx.conf" & pids+=($!)
DRAWBRIDGE_LOG=warn taskset -c "$SERVER_CPU" "$ROOT/target/release/drawbridge" serve --config "$WORK/drawbridge.toml" 2>"$WORK/logs/drawbridge.err" & pids+=($!)
DB_PID=$!
DRAWBRIDGE_LOG=warn taskset -c "$SERVER_CPU" "$ROOT/target/release/drawbridge" serve --config "$WORK/drawbridge-redis.toml" 2>"$WORK/logs/drawbridge-redis.err" & pids+=($!)
DB2_PID=$!
DRAWBRIDGE_LOG=warn taskset -c "$SERVER_CPU" "$ROOT/target/release/drawbridge" serve --config "$WORK/drawbridge-full.toml" 2>"$WORK/logs/drawbridge-full.err" & pids+=($!)
FULL_PID=$!
taskset -c "$SERVER_CPU" "$ROOT/target/release/drawbridge-floor" "127.0.0.1:$FLOOR_PORT" "127.0.0.1:$UP_PORT" & pids+=($!)
FLOOR_PID=$!
# The floor with a fixed amount of its own work a request.
FLOOR_WORK_NS="$FLOOR_WORK_NS" taskset -c "$SERVER_CPU" "$ROOT/target/release/drawbridge-floor" "127.0.0.1:$FLOOR_WORK_PORT" "127.0.0.1:$UP_PORT" & pids+=($!)
FLOOR_WORK_PID=$!
# The floor doing a public route's duties.
FLOOR_DUTIES=1 taskset -c "$SERVER_CPU" "$ROOT/target/release/drawbridge-floor" "127.0.0.1:$FLOOR_DUTIES_PORT" "127.0.0.1:$UP_PORT" & pids+=($!)
FLOOR_DUTIES_PID=$!
# The floor of a TLS listener: the same proxy behind rustls, with the benchmark's certificate.
taskset -c "$SERVER_CPU" "$ROOT/target/release/drawbridge-floor" "127.0.0.1:$FLOOR_TLS_PORT" "127.0.0.1:$UP_PORT" "$WORK/tls.crt" "$WORK/tls.key" & pids+=($!)
FLOOR_TLS_PID=$!
# The floor of the full path: the TLS floor that also checks the token, asks the policies and
# writes an audit and an access line saying what Drawbridge's say, the least way on the same
# crates.
taskset -c "$SERVER_CPU" "$ROOT/target/release/drawbridge-floor" "127.0.0.1:$FLOOR_FULL_PORT" "127.0.0.1:$UP_PORT" "$WORK/tls.crt" "$WORK/tls.key" \
  "$WORK/jwks.json" "$WORK/policies.cedar" "$WORK/logs/floor-full" "$ISS" & pids+=($!)
FLOOR_FULL_PID=$!
for _ in $(seq 100); do curl -sfk "https://localhost:$FLOOR_TLS_PORT/" >/dev/null && break; sleep 0.1; done
curl -sfk "https://localhost:$FLOOR_TLS_PORT/" >/dev/null || { echo "the TLS floor did not start"; exit 1; }
for port in $UP_PORT $NGINX_PORT $DB_PORT $DB2_PORT $FLOOR_PORT $FLOOR_WORK_PORT $FLOOR_DUTIES_PORT; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$port/" >/dev/null || { echo "server on $port did not start"; cat "$WORK"/logs/*; exit 1; }
done

# The processes whose CPU time is charged to each path (nginx: its worker).
NGINX_WORKER="$(pgrep -P "$(cat "$WORK/nginx.pid")" | head -1)"
declare -A PID=([direct]="$(pgrep -P "$(cat "$WORK/upstream.pid")" | head -1)" [nginx]="$NGINX_WORKER" [drawbridge]="$DB_PID" [floor]="$FLOOR_PID"
  [nginx-tls]="$NGINX_WORKER" [nginx-full]="$NGINX_WORKER" [drawbridge-full]="$FULL_PID" [floor-tls]="$FLOOR_TLS_PID"
  [floor-full]="$FLOOR_FULL_PID" [floor-work]="$FLOOR_WORK_PID" [floor-duties]="$FLOOR_DUTIES_PID")
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A URL=([direct]="http://127.0.0.1:$UP_PORT/" [nginx]="http://127.0.0.1:$NGINX_PORT/" [drawbridge]="http://127.0.0.1:$DB_PORT/"
  [floor]="http://127.0.0.1:$FLOOR_PORT/" [nginx-tls]="https://localhost:$NGINX_TLS_PORT/" [nginx-full]="https://localhost:$NGINX_FULL_PORT/"
  [drawbridge-full]="https://localhost:$FULL_PORT/jwt-rs256-authz" [floor-tls]="https://localhost:$FLOOR_TLS_PORT/"
  [floor-full]="https://localhost:$FLOOR_FULL_PORT/jwt-rs256-authz" [floor-work]="http://127.0.0.1:$FLOOR_WORK_PORT/"
  [floor-duties]="http://127.0.0.1:$FLOOR_DUTIES_PORT/")
# JWT routes: the same proxy process, a bearer token on every request.
declare -A AUTH=()
for v in rs256 rs256-nocache es256 es256-nocache rs256-authz es256-authz; do
  t="drawbridge-jwt-$v"
  URL[$t]="http://127.0.0.1:$DB_PORT/jwt-$v"
  PID[$t]="${PID[drawbridge]}"
  alg=${v%%-*}
  AUTH[$t]="Authorization: Bearer ${TOKEN[${alg^^}]}"
done
# TLS routes: a bearer token, and a signed-in person's session cookie.
SESSION=$(python3 bench/sign-in.py "https://localhost:$TLS_PORT/tls-session/" alice alice-pw)
SESSION2=$(python3 bench/sign-in.py "https://localhost:$TLS2_PORT/tls-session/" alice alice-pw)
URL[drawbridge-tls-jwt]="https://localhost:$TLS_PORT/tls-jwt"; PID[drawbridge-tls-jwt]=$DB_PID
AUTH[drawbridge-tls-jwt]="Authorization: Bearer ${TOKEN[RS256]}"
URL[drawbridge-tls-session]="https://localhost:$TLS_PORT/tls-session"; PID[drawbridge-tls-session]=$DB_PID
AUTH[drawbridge-tls-session]="Cookie: __Host-drawbridge-session=$SESSION"
URL[drawbridge-tls-session-redis]="https://localhost:$TLS2_PORT/tls-session"; PID[drawbridge-tls-session-redis]=$DB2_PID
AUTH[drawbridge-tls-session-redis]="Cookie: __Host-drawbridge-session=$SESSION2"
AUTH[nginx-full]="Authorization: Bearer ${TOKEN[RS256]}"
AUTH[drawbridge-full]="Authorization: Bearer ${TOKEN[RS256]}"
AUTH[floor-full]="Authorization: Bearer ${TOKEN[RS256]}"
TARGETS=(direct nginx floor floor-work floor-duties drawbridge nginx-tls floor-tls nginx-full floor-full drawbridge-full drawbridge-jwt-rs256 drawbridge-jwt-rs256-nocache drawbridge-jwt-es256 drawbridge-jwt-es256-nocache drawbridge-jwt-rs256-authz drawbridge-jwt-es256-authz drawbridge-tls-jwt drawbridge-tls-session drawbridge-tls-session-redis)
if [ -n "${ONLY:-}" ]; then read -r -a TARGETS <<< "direct nginx floor floor-work floor-duties drawbridge $ONLY"; fi
# Refuse to measure a route that does not admit its token, or one that admits no token.
for t in "${TARGETS[@]}"; do
  [ -n "${AUTH[$t]:-}" ] || continue
  code=$(curl -sk -o /dev/null -w '%{http_code}' -H "${AUTH[$t]}" "${URL[$t]}")
  [ "$code" = 200 ] || { echo "$t answered $code, not 200"; cat "$WORK"/logs/*; exit 1; }
  case "$t" in *-tls-session*) continue ;; esac
  code=$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer ${TOKEN[RS256]}x" "${URL[$t]}")
  [ "$code" = 401 ] || { echo "$t answered $code to a forged token, not 401"; exit 1; }
done
hdr() { if [ -n "${AUTH[$1]:-}" ]; then printf '%s\n' -H "${AUTH[$1]}"; fi; }
RAW="$WORK/raw.tsv"
: > "$RAW"

# Idle phase: memory per idle keep-alive connection, and new clients' throughput meanwhile.
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# Run first, on processes that served nothing yet (nginx's TLS server after its plain one:
# one worker serves both), so memory freed by earlier phases is not counted as reused.
idle_phase() {  # name, port, pid, tls|plain, path
  local name=$1 port=$2 pid=$3 mode=$4 path=$5 held before during after rps non2xx url
  url="http://127.0.0.1:$port$path"; [ "$mode" = tls ] && url="https://localhost:$port$path"
  before=$(rss_kb "$pid")
  coproc HOLD { taskset -c "$LOADGEN_CPU" python3 "$ROOT/bench/idle.py" 127.0.0.1 "$port" "$IDLE" "$mode" "$path"; }
  read -r _ held <&"${HOLD[0]}"
  sleep 3   # idle a while (Drawbridge parks idle HTTP/1.1 connections after a second or two)
  during=$(rss_kb "$pid")
  taskset -c "$LOADGEN_CPU" wrk -t1 -c32 -d"${DURATION}s" "$url" > "$WORK/wrk.txt"
  rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.txt")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$WORK/wrk.txt"); non2xx=${non2xx:-0}
  exec {HOLD[1]}>&-
  wait "$HOLD_PID" 2>/dev/null || true
  sleep 5
  after=$(rss_kb "$pid")
  printf 'idle\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$held" "$before" "$during" "$after" "$rps" "$non2xx" >> "$RAW"
}
if [ "$IDLE" -gt 0 ]; then
  idle_phase nginx "$NGINX_PORT" "$NGINX_WORKER" plain /
  idle_phase nginx-tls "$NGINX_TLS_PORT" "$NGINX_WORKER" tls /
  idle_phase floor "$FLOOR_PORT" "$FLOOR_PID" plain /
  idle_phase floor-tls "$FLOOR_TLS_PORT" "$FLOOR_TLS_PID" tls /
  idle_phase drawbridge "$DB_PORT" "$DB_PID" plain /
  idle_phase drawbridge-tls "$FULL_PORT" "$FULL_PID" tls /public
fi

for t in "${TARGETS[@]}"; do
  mapfile -t H < <(hdr "$t")
  taskset -c "$LOADGEN_CPU" wrk -t1 -c32 -d2s "${H[@]}" "${URL[$t]}" >/dev/null   # warm-up: pools, caches
done
# Repeats go round the targets, so a noisy moment on a shared machine hurts all of them alike.
for r in $(seq "$REPEATS"); do
  for c in 32 256; do
    for t in "${TARGETS[@]}"; do
      before=$(cpu_ticks "${PID[$t]}")
      mapfile -t H < <(hdr "$t")
      taskset -c "$LOADGEN_CPU" wrk -t1 -c"$c" -d"${DURATION}s" --latency "${H[@]}" "${URL[$t]}" > "$WORK/wrk.txt"
      after=$(cpu_ticks "${PID[$t]}")
      python3 - "$t" "$c" "$WORK/wrk.txt" "$((after - before))" "$(getconf CLK_TCK)" >> "$RAW" <<'PY'
import re, sys
target, conns, path, ticks, hz = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
text = open(path).read()
def ms(v, unit):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
lat = {p: ms(v, u) for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)}
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
count = int(re.search(r"(\d+) requests in", text).group(1))
cpu_us = ticks / hz / max(count, 1) * 1e6
print(f"throughput\t{target}\t{conns}\t{rps:.0f}\t{lat['50']:.3f}\t{lat['99']:.3f}\t{errors.group(1) if errors else 0}\t{cpu_us:.1f}")
PY
    done
  done
done
# The cached JWT route against the public route in alternating 1 s windows: the machine's
# swings between the 5-10 s windows above move one target and not the other; here both
# share every swing. Requests summed over ALT windows of each.
ALT=${ALT:-10}
if [[ " ${TARGETS[*]} " == *" drawbridge-jwt-rs256 "* ]] && [ "$ALT" -gt 0 ]; then
  mapfile -t H < <(hdr drawbridge-jwt-rs256)
  served() { awk '/requests in/ {print $1}'; }
  for c in 32 256; do
    for _ in $(seq "$ALT"); do
      a=$(taskset -c "$LOADGEN_CPU" wrk -t1 -c"$c" -d1s "${URL[drawbridge]}" | served)
      b=$(taskset -c "$LOADGEN_CPU" wrk -t1 -c"$c" -d1s "${H[@]}" "${URL[drawbridge-jwt-rs256]}" | served)
      printf 'alternating\tdrawbridge-jwt-rs256\t%s\t%s\t%s\n' "$c" "$a" "$b" >> "$RAW"
    done
  done
fi
for t in "${TARGETS[@]}"; do
  case "${URL[$t]}" in https:*) continue ;; esac   # hey checks certificates: plain HTTP only
  mapfile -t H < <(hdr "$t")
  taskset -c "$LOADGEN_CPU" hey -z "${DURATION}s" -c 20 -q $((RATE / 20)) "${H[@]}" "${URL[$t]}" > "$WORK/hey.txt"
  python3 - "$t" "$WORK/hey.txt" >> "$RAW" <<'PY'
import re, sys
target, path = sys.argv[1], sys.argv[2]
text = open(path).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
lat = {p: float(v) * 1000 for p, v in re.findall(r"(50|99)%+ in ([\d.]+) secs", text)}
codes = re.search(r"\[200\]\s+(\d+) responses", text)
print(f"rate\t{target}\t-\t{rps:.0f}\t{lat['50']:.3f}\t{lat['99']:.3f}\t{'0' if codes else 'all'}")
PY
done

# Sign-ins started per second: each answers 302 to the provider and writes a sign-in state.
taskset -c "$LOADGEN_CPU" wrk -t1 -c32 -d"${DURATION}s" -H "Accept: text/html" \
  "https://localhost:$TLS_PORT/.drawbridge/sign_in?rd=%2Ftls-session%2F" > "$WORK/wrk.txt"
python3 - "$WORK/wrk.txt" >> "$RAW" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
print(f"signin\tdrawbridge-tls-sign-in\t32\t{rps:.0f}")
PY

python3 - "$RAW" "$DURATION" "$REPEATS" "$RATE" "$FLOOR_WORK_NS" > "$OUT/latest.md" <<'PY'
import statistics, sys, platform, subprocess
raw, duration, repeats, rate, work_ns = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
rows = [l.rstrip("\n").split("\t") for l in open(raw) if l.strip()]
def median_run(kind, target, conns):
    runs = [r for r in rows if r[0] == kind and r[1] == target and r[2] == conns]
    runs.sort(key=lambda r: float(r[3]))
    return runs[len(runs) // 2]
def rounds(target, conns):
    """A target's throughput rows in the order they ran: one per repeat."""
    return [r for r in rows if r[0] == "throughput" and r[1] == target and r[2] == conns]
def per_repeat(label, a, b, conns, col):
    """`a` over `b` in each repeat (measured minutes apart, not hours): column 3 is
    requests/s, 7 CPU µs a request."""
    ra, rb = rounds(a, conns), rounds(b, conns)
    ratios = sorted(float(x[col]) / float(y[col]) for x, y in zip(ra, rb))
    return f"{label} " + " / ".join(f"{v:.2f}" for v in ratios)
targets = [t for t in ["direct", "nginx", "floor", "floor-work", "floor-duties", "drawbridge"] if any(r[1] == t for r in rows)]
jwt = [t for t in ["drawbridge-jwt-rs256", "drawbridge-jwt-rs256-nocache", "drawbridge-jwt-es256", "drawbridge-jwt-es256-nocache",
                   "drawbridge-jwt-rs256-authz", "drawbridge-jwt-es256-authz"]
       if any(r[1] == t for r in rows)]
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
print(f"Machine: {cpu}, {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores. "
      f"{duration} s per measurement, median of {repeats}; fixed rate {rate} requests/s.\n")
for conns in ["32", "256"]:
    print(f"### Throughput, {conns} keep-alive connections (wrk)\n")
    print("| path | requests/s | p50 ms | p99 ms | non-2xx | vs direct | vs nginx | vs floor | CPU µs/request | CPU vs floor |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = {t: median_run("throughput", t, conns) for t in targets}
    for t in targets:
        r = base[t]
        print(f"| {t} | {float(r[3]):,.0f} | {float(r[4]):.3f} | {float(r[5]):.3f} | {r[6]} | "
              f"{float(r[3]) / float(base['direct'][3]):.2f} | {float(r[3]) / float(base['nginx'][3]):.2f} | "
              f"{float(r[3]) / float(base['floor'][3]):.2f} | {r[7]} | {float(r[7]) / float(base['floor'][7]):.2f} |")
    print()
    spread = {t: sorted(float(r[3]) for r in rows if r[0] == "throughput" and r[1] == t and r[2] == conns) for t in targets}
    print("Spread across repeats (requests/s, lowest to highest): " + "; ".join(
        f"{t} {' / '.join(f'{v:,.0f}' for v in vs)}" for t, vs in spread.items()) + "\n")
    print("Per repeat, lowest to highest: " + per_repeat("Drawbridge's CPU a request vs the floor's", "drawbridge", "floor", conns, 7)
          + "; " + per_repeat("requests/s vs nginx", "drawbridge", "nginx", conns, 3)
          + ("; " + per_repeat(f"floor-work's ({work_ns} ns busy a request) CPU vs the floor's", "floor-work", "floor", conns, 7)
             if "floor-work" in targets else "")
          + ("; " + per_repeat("floor-duties' CPU vs the floor's", "floor-duties", "floor", conns, 7)
             + "; " + per_repeat("Drawbridge's CPU vs floor-duties'", "drawbridge", "floor-duties", conns, 7)
             if "floor-duties" in targets else "") + "\n")
    full = [t for t in ["nginx-tls", "floor-tls", "nginx-full", "floor-full", "drawbridge-full"] if any(r[1] == t for r in rows)]
    if {"nginx-tls", "nginx-full", "drawbridge-full"} <= set(full):
        print(f"Full access path over TLS 1.3, {conns} connections (nginx: TLS alone; TLS + Lua RS256 check + limit_req + "
              "buffered access log. Drawbridge: TLS + cached RS256 JWT + 100 Cedar policies + access log and audit trail to files. "
              "floor-tls: the floor behind rustls, the least a TLS listener on hyper and rustls can do. "
              "floor-full: floor-tls that also checks the cached RS256 JWT, asks the same 100 policies and writes a "
              "hash-chained audit line and an access line with what Drawbridge's say, the least way on the crates Drawbridge uses):\n")
        print("| path | requests/s | p50 ms | p99 ms | non-2xx | vs nginx TLS | vs floor TLS | vs nginx full | CPU µs/request |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        f = {t: median_run("throughput", t, conns) for t in full}
        for t in full:
            r = f[t]
            vs_floor = f"{float(r[3]) / float(f['floor-tls'][3]):.2f}" if "floor-tls" in f else "–"
            print(f"| {t} | {float(r[3]):,.0f} | {float(r[4]):.3f} | {float(r[5]):.3f} | {r[6]} | "
                  f"{float(r[3]) / float(f['nginx-tls'][3]):.2f} | {vs_floor} | {float(r[3]) / float(f['nginx-full'][3]):.2f} | {r[7]} |")
        print()
        print("Per repeat, requests/s, lowest to highest: " + "; ".join(
            per_repeat(f"{t} vs nginx TLS", t, "nginx-tls", conns, 3) for t in full if t != "nginx-tls")
            + "; " + per_repeat("drawbridge-full vs nginx full", "drawbridge-full", "nginx-full", conns, 3) + "\n")
    if jwt:
        print(f"JWT routes, {conns} connections (the same proxy; a bearer token on every request):\n")
        print("| route | requests/s | p50 ms | p99 ms | non-2xx | vs public route | vs nginx | CPU µs/request |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for t in jwt:
            r = median_run("throughput", t, conns)
            print(f"| {t.removeprefix('drawbridge-')} | {float(r[3]):,.0f} | {float(r[4]):.3f} | {float(r[5]):.3f} | {r[6]} | "
                  f"{float(r[3]) / float(base['drawbridge'][3]):.2f} | {float(r[3]) / float(base['nginx'][3]):.2f} | {r[7]} |")
        print()
        print("Per repeat, requests/s vs the public route, lowest to highest: " + "; ".join(
            per_repeat(t.removeprefix("drawbridge-"), t, "drawbridge", conns, 3) for t in jwt) + "\n")
        alt = [r for r in rows if r[0] == "alternating" and r[2] == conns]
        if alt:
            ratios = sorted(int(r[4]) / int(r[3]) for r in alt)
            print(f"Alternating 1 s windows ({len(alt)} of each): jwt-rs256 served "
                  f"{sum(int(r[4]) for r in alt) / sum(int(r[3]) for r in alt):.2f} of the public route's requests; "
                  f"window pairs {ratios[0]:.2f} / {statistics.median(ratios):.2f} / {ratios[-1]:.2f} "
                  "(lowest / median / highest)\n")
        pairs = [(t, t.removesuffix("-authz")) for t in jwt if t.endswith("-authz") and t.removesuffix("-authz") in jwt]
        if pairs:
            print(f"Authorization's cost, {conns} connections (the same JWT route with and without its policies):\n")
            print("| route | requests/s vs without | CPU µs/request added | CPU vs without |")
            print("|---|---:|---:|---:|")
            for a, b in pairs:
                ra, rb = median_run("throughput", a, conns), median_run("throughput", b, conns)
                print(f"| {a.removeprefix('drawbridge-')} | {float(ra[3]) / float(rb[3]):.2f} | "
                      f"{float(ra[7]) - float(rb[7]):+.1f} | {float(ra[7]) / float(rb[7]):.2f} |")
            print()
tls = [t for t in ["drawbridge-tls-jwt", "drawbridge-tls-session", "drawbridge-tls-session-redis"] if any(r[1] == t for r in rows)]
if tls:
    for conns in ["32", "256"]:
        print(f"### Sessions over TLS, {conns} connections\n")
        print("TLS routes of the same proxy (`tls-session-redis`: a second one, its sessions in Redis read on every request):\n")
        print("| route | requests/s | p50 ms | p99 ms | non-2xx | vs cached JWT route | CPU µs/request |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        base = median_run("throughput", "drawbridge-tls-jwt", conns)
        for t in tls:
            r = median_run("throughput", t, conns)
            print(f"| {t.removeprefix('drawbridge-')} | {float(r[3]):,.0f} | {float(r[4]):.3f} | {float(r[5]):.3f} | {r[6]} | "
                  f"{float(r[3]) / float(base[3]):.2f} | {r[7]} |")
        print()
signin = [r for r in rows if r[0] == "signin"]
if signin:
    print(f"Sign-ins started: {float(signin[0][3]):,.0f} per second (32 connections; each a 302 to the provider and a sign-in state written to the embedded store).\n")
idle = [r for r in rows if r[0] == "idle"]
if idle:
    print("### Idle keep-alive connections\n")
    print("Each server holds the idle connections (one request served on each, then nothing); memory is the "
          "serving process's resident set; new clients: wrk at 32 connections meanwhile.\n")
    print("| server | held | memory per connection | kept 5 s after they closed | new clients' requests/s while held | non-2xx |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in idle:
        held, before, during, after, rps = int(r[2]), int(r[3]), int(r[4]), int(r[5]), float(r[6])
        per = (during - before) * 1024 / max(held, 1)
        print(f"| {r[1]} | {held:,} | {per / 1024:.2f} KB | {(after - before) / 1024:+.1f} MB | {rps:,.0f} | {r[7]} |")
    print()
print(f"### Latency at a fixed {rate} requests/s (hey)\n")
print("| path | achieved rps | p50 ms | p99 ms | p99 vs nginx |")
print("|---|---:|---:|---:|---:|")
rate_rows = {r[1]: r for r in rows if r[0] == "rate"}
for t in targets + jwt:
    r = rate_rows[t]
    print(f"| {t} | {float(r[3]):,.0f} | {float(r[4]):.3f} | {float(r[5]):.3f} | {float(r[5]) / float(rate_rows['nginx'][5]):.2f} |")
PY
cp "$RAW" "$OUT/raw.tsv"
cat "$OUT/latest.md"

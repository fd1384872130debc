#!/bin/sh
# A blue-green release by hand: the steps `cdlib release` takes, with the same waits, written as a
# shell script the way one would without cdlib. benchmarks/release_vs_shell.py times it against
# `cdlib release`; it is not meant for anything else.
#
# Environment (all required):
#   SVC      service name (containers <SVC>-<color>-<n>)
#   IMAGE    image reference to release (repository:tag)
#   DIR      this service's nginx prefix directory (nginx.conf, nginx.pid, the current color in live)
#   LISTEN   nginx's port on 127.0.0.1
#   PORTS_BLUE, PORTS_GREEN   the two host ports pinned for each color's replicas ("p1 p2")
#   SUITE    the suite as one shell command, run with TARGET_URL set
#   INTERVAL health polling interval (seconds); HEALTH_TRIES how many polls before giving up
# Optional: BENCH_FAIL=post-integration makes the post-integration suite fail (the release is then rolled back).
# Exit 0 released, 1 failed and rolled back, 2 failed before anything could be undone.
set -eu

live=$(cat "$DIR/live" 2>/dev/null || true)
if [ "$live" = blue ]; then new=green; ports=$PORTS_GREEN; else new=blue; ports=$PORTS_BLUE; fi
release=$(date +%s%N)
route="/$SVC/"

# 1. set the next color's stopped instances aside (kept for a rollback, removed at the end)
aside=""
for n in 1 2; do
  if docker rename "$SVC-$new-$n" "$SVC-$new-$n.aside-$release" 2>/dev/null; then
    aside="$aside $SVC-$new-$n.aside-$release"
  fi
done

undo_containers() {
  docker rm -f "$SVC-$new-1" "$SVC-$new-2" >/dev/null 2>&1 || true
  for a in $aside; do docker rename "$a" "${a%.aside-*}"; done
}

# 2. start the replicas on their pinned ports
n=0
servers=""
for port in $ports; do
  n=$((n + 1))
  docker run -d --init --restart unless-stopped --stop-timeout 5 --name "$SVC-$new-$n" \
    --label "cdlib.bench=$SVC" --label "cdlib.color=$new" --label "cdlib.release=$release" \
    -e "CDLIB_SERVICE=$SVC" -e "CDLIB_COLOR=$new" -e "CDLIB_RELEASE=$release" \
    -p "127.0.0.1:$port:8080" "$IMAGE" >/dev/null || { undo_containers; exit 1; }
  servers="$servers 127.0.0.1:$port"
done

# 3. health: poll every instance until it answers
for server in $servers; do
  tries=0
  until curl -fs -o /dev/null --max-time 2 "http://$server/health"; do
    tries=$((tries + 1))
    if [ "$tries" -ge "$HEALTH_TRIES" ]; then undo_containers; exit 1; fi
    sleep "$INTERVAL"
  done
done

# 4. pre-integration suite against the first instance
first=${servers# }
first=${first%% *}
if ! TEST_TYPE=pre-integration TARGET_URL="http://$first" sh -c "$SUITE"; then undo_containers; exit 1; fi

# 5. switch nginx: write, validate, swap, reload, wait for the old workers to exit
mkdir -p "$DIR/logs"
conf="$DIR/nginx.conf"
[ -f "$conf" ] && cp "$conf" "$DIR/nginx.conf.prev"
upstream=""
for server in $servers; do upstream="$upstream        server $server max_fails=1 fail_timeout=5s;
"; done
cat >"$DIR/nginx.conf.new" <<EOF
worker_processes 2;
daemon on;
pid nginx.pid;
error_log error.log notice;
worker_shutdown_timeout 12s;
events { worker_connections 1024; }
http {
    access_log off;
    client_max_body_size 1m;
    client_body_buffer_size 1m;
    proxy_max_temp_file_size 0;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_next_upstream error timeout http_502 http_503;
    map \$http_x_probe \$probe_upstream { default ""; "1" \$upstream_addr; }
    upstream $SVC-$new {
$upstream        keepalive 16;
    }
    server {
        listen 127.0.0.1:$LISTEN;
        location $route {
            proxy_pass http://$SVC-$new/;
            add_header X-Upstream \$probe_upstream always;
        }
    }
}
EOF
nginx -t -q -p "$DIR/" -c "$DIR/nginx.conf.new" || { undo_containers; exit 1; }
mv "$DIR/nginx.conf.new" "$conf"

reload() {
  master=$(cat "$DIR/nginx.pid" 2>/dev/null || true)
  if [ -n "$master" ] && kill -0 "$master" 2>/dev/null; then
    old=$(pgrep -P "$master" || true)
    nginx -s reload -p "$DIR/" -c "$conf"
    for w in $old; do while kill -0 "$w" 2>/dev/null; do sleep 0.01; done; done
  else
    nginx -p "$DIR/" -c "$conf"
    until curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$LISTEN/"; do sleep 0.01; done
  fi
}

rollback_proxy() {
  if [ -f "$DIR/nginx.conf.prev" ]; then
    cp "$DIR/nginx.conf.prev" "$conf"
    reload
  else
    nginx -s quit -p "$DIR/" -c "$conf" 2>/dev/null || true
    rm -f "$conf"
  fi
}
reload

# 6. probe through nginx until the new color answered three times in a row
streak=0
tries=0
while [ "$streak" -lt 3 ]; do
  up=$(curl -s -o /dev/null -D - -H "X-Probe: 1" --max-time 2 "http://127.0.0.1:$LISTEN${route}version" \
       | tr -d '\r' | sed -n 's/^[Xx]-[Uu]pstream: //p')
  case "$servers " in
    *" $up "*) streak=$((streak + 1)) ;;
    *) streak=0; tries=$((tries + 1))
       if [ "$tries" -ge 100 ]; then rollback_proxy; undo_containers; exit 1; fi
       sleep 0.1 ;;
  esac
done
echo "$new" >"$DIR/live"

# 7. post-integration suite through nginx
if ! TEST_TYPE=post-integration TARGET_URL="http://127.0.0.1:$LISTEN$route" sh -c "$SUITE"; then
  echo "$live" >"$DIR/live"
  rollback_proxy
  undo_containers
  exit 1
fi

# 8. stop the old color (kept for a quick rollback), then drop the set-aside instances
if [ -n "$live" ]; then docker stop -t 5 "$SVC-$live-1" "$SVC-$live-2" >/dev/null; fi
if [ -n "$aside" ]; then docker rm $aside >/dev/null; fi
exit 0

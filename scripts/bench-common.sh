# Sourced by the benchmark scripts: the strict server and the measuring of one run.
# Needs $target (the build's output directory) and $dir (the benchmark directory).

export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
# start_strict: a fresh strict EBS server; sets $server_pid and $endpoint.
start_strict() {
  "$target/ebs-testserver" --completion-delay-ms 0 > "$dir/server.out" &
  server_pid=$!
  for _ in $(seq 100); do grep -q listening "$dir/server.out" 2>/dev/null && break; sleep 0.1; done
  endpoint=$(sed -n 's/^listening on //p' "$dir/server.out")
}
stop_server() { kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null || true; }
# measure NAME COMMAND...: one line "NAME wall cpu rss"
measure() {
  local name=$1; shift
  /usr/bin/time -f "%e %U %S %M" -o "$dir/time.out" "$@" > "$dir/$name.stdout" 2> "$dir/$name.stderr" || {
    echo "$name failed:" >&2; tail -5 "$dir/$name.stderr" >&2; exit 2; }
  read -r wall user sys rss < "$dir/time.out"
  echo "$name $wall $(python3 -c "print($user + $sys)") $rss"
}

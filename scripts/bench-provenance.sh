#!/usr/bin/env bash
# Benchmark: what dpkg provenance (the MD5 of every package file, and the integrity
# findings) adds to the audit of the debootstrap'd Debian root: the same image with
# dpkg's file digests and with them renamed (info/*.md5sums, and the status file's
# Conffiles:, the same bytes under names the provenance does not read), so that the
# provenance has nothing to check, RUNS alternating runs each, medians of the
# whole process's CPU and wall time. The images are those `scripts/bench-audit.sh
# debian` makes (run it once first); this measures only the two audits.
#
#   scripts/bench-provenance.sh [RUNS]       (default 9)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-9}
dir=${BENCH_DIR:-$PWD/target/bench}/audit-debian
for img in image-4g.img image-4g-no-provenance.img; do
  [ -f "$dir/$img" ] || { echo "$dir/$img is missing: run scripts/bench-audit.sh debian first" >&2; exit 2; }
done
command -v /usr/bin/time >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
profile=${BENCH_PROFILE:-release}
cargo build --profile "$profile" --locked --quiet -p amiforge
bin=${CARGO_TARGET_DIR:-$PWD/target}/$([ "$profile" = dev ] && echo debug || echo "$profile")/amiforge
for _ in $(seq "$runs"); do
  for img in image-4g.img image-4g-no-provenance.img; do
    /usr/bin/time -f "$img %e %U %S" -o "$dir/provenance-time.out" \
      "$bin" audit "$dir/$img" --format json --fail-on none > /dev/null 2>&1
    cat "$dir/provenance-time.out"
  done
done | python3 -c '
import statistics, sys
runs = {}
for line in sys.stdin:
    name, wall, user, system = line.split()
    runs.setdefault(name, []).append((float(user) + float(system), float(wall)))
med = {n: [statistics.median(r[i] for r in v) for i in (0, 1)] for n, v in runs.items()}
(a_cpu, a_wall), (b_cpu, b_wall) = med["image-4g.img"], med["image-4g-no-provenance.img"]
n = len(runs["image-4g.img"])
print(f"with dpkg digests: {a_cpu:.2f} CPU s, {a_wall:.3f} s wall; without: {b_cpu:.2f} CPU s, {b_wall:.3f} s wall")
print(f"provenance costs {100 * (a_cpu / b_cpu - 1):+.1f}% CPU and {100 * (a_wall / b_wall - 1):+.1f}% wall "
      f"(medians of {n} alternating runs; goal: at most +10%)")
'

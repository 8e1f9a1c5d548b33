#!/usr/bin/env bash
# Benchmark: secret-scanning throughput and recall, amiforge beside Kingfisher and
# detect-secrets (both from PyPI), on the same tree of mixed text and binary files
# with a freshly planted secret for each amiforge rule; then a whole audit of a 4 GiB
# image holding that tree.
#
#   scripts/bench-audit.sh [TREE_MIB]     (default 2048)
#   scripts/bench-audit.sh debian         (a debootstrap'd Debian 12 cloud root)
#
# The default tree is synthetic (scripts/bench-tree.sh); `debian` is a real
# distribution tree with the same planted secrets (scripts/bench-debian-tree.sh).
#
# Kingfisher and detect-secrets scan the extracted directory. amiforge scans an ext4
# image of the same directory (made by mkfs.ext4 -d), so its time includes reading the
# filesystem and running every other auditor (packages, hygiene, deleted data).
# Recall counts, for each planted secret's file, whether the tool reported it.
set -euo pipefail
cd "$(dirname "$0")/.."
tree_mib=${1:-2048}
scripts/install-deps.sh
command -v /usr/bin/time >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
venv=$HOME/.cache/amiforge/bench-venv
if ! [ -x "$venv/bin/kingfisher" ] || ! [ -x "$venv/bin/detect-secrets" ]; then
  echo "installing kingfisher-bin and detect-secrets into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kingfisher-bin detect-secrets
fi
profile=${BENCH_PROFILE:-release}
# The same package set as bench-upload.sh, so both reuse one build.
cargo build --profile "$profile" --locked --quiet -p amiforge -p ebs-testserver
target=${CARGO_TARGET_DIR:-$PWD/target}/$([ "$profile" = dev ] && echo debug || echo "$profile")
if [ "$tree_mib" = debian ]; then
  dir=${BENCH_DIR:-$PWD/target/bench}/audit-debian
  tree=$(scripts/bench-debian-tree.sh "$dir")
else
  dir=${BENCH_DIR:-$PWD/target/bench}/audit
  tree=$(scripts/bench-tree.sh "$dir" "$tree_mib")
fi
mkdir -p "$dir"
tree_bytes=$(du -sb "$tree" | cut -f1)
image=$dir/image-4g.img
if [ ! -f "$image" ] || [ "$tree.done" -nt "$image" ]; then
  echo "making $image (4 GiB ext4 holding the tree)..." >&2
  rm -f "$image" && truncate -s 4G "$image"
  mkfs.ext4 -q -F -d "$tree" "$image"
fi

# measure NAME COMMAND...: "NAME wall cpu rss"; the command's exit code is ignored
# (secret scanners exit non-zero when they find something).
measure() {
  local name=$1; shift
  /usr/bin/time -f "%e %U %S %M" -o "$dir/time.out" "$@" > "$dir/$name.out" 2> "$dir/$name.err" || true
  read -r wall user sys rss < <(tail -1 "$dir/time.out")
  echo "$name $wall $(python3 -c "print(round($user + $sys, 2))") $rss"
}
sync
cat "$image" > /dev/null; find "$tree" -type f -exec cat {} + > /dev/null   # warm the page cache for all
results=()
results+=("$(measure amiforge "$target/amiforge" audit "$image" --format json --fail-on none)")
# Kingfisher compiles its rules on first use: one untimed run on the planted files fills its cache.
"$venv/bin/kingfisher" scan "$tree/srv" -n --format json > /dev/null 2>&1 || true
results+=("$(measure kingfisher "$venv/bin/kingfisher" scan "$tree" -n --format json --no-update-check)")
# detect-secrets is pure Python: on the whole tree it gets DS_TIMEOUT seconds (then its
# throughput is reported as an upper bound); its recall is measured on the planted
# directories alone, where it finishes.
ds_timeout=${DS_TIMEOUT:-600}
results+=("$(measure detect-secrets timeout "$ds_timeout" "$venv/bin/detect-secrets" scan --all-files "$tree")")
(cd "$tree" && "$venv/bin/detect-secrets" scan --all-files srv root home var > "$dir/detect-secrets-planted.out" 2>/dev/null) || true

python3 - "$dir" "$tree" "$tree_bytes" "$ds_timeout" "${results[@]}" <<'PY'
import json, os, sys
d, tree, tree_bytes, ds_timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
rows = [r.split() for r in sys.argv[5:]]
expected = json.load(open(os.path.join(d, "expected.json")))
planted = {}
for rule, path in expected.items():
    if rule != "deleted":
        planted.setdefault(path, []).append(rule)

def found_paths(name):
    text = open(os.path.join(d, f"{name}.out")).read()
    counts = {}
    if name == "amiforge":
        for f in json.loads(text)["findings"]:
            if f["category"] == "secret" and f.get("path"):
                counts[f["path"]] = counts.get(f["path"], 0) + 1
    elif name == "kingfisher":
        # Kingfisher writes two JSON documents: the findings, then a summary.
        dec, i, docs = json.JSONDecoder(), 0, []
        while i < len(text):
            while i < len(text) and text[i].isspace():
                i += 1
            if i < len(text):
                obj, i = dec.raw_decode(text, i)
                docs.append(obj)
        findings = docs[0].get("findings", []) if docs else []
        for f in findings:
            p = "/" + os.path.relpath(os.path.abspath(f["finding"]["path"]), tree)
            counts[p] = counts.get(p, 0) + 1
    else:
        text = open(os.path.join(d, "detect-secrets-planted.out")).read()
        for p, fs in json.loads(text).get("results", {}).items():
            counts["/" + p] = len(fs)
    return counts

mib = tree_bytes / 2**20
print(f"\ntree: {mib:.0f} MiB; planted secrets: {sum(len(v) for v in planted.values())} in {len(planted)} files\n")
print("| tool | wall s | cpu s | MiB/s | MB per CPU-s | peak RSS MiB | recall |")
print("|---|---|---|---|---|---|---|")
rate = {}
for name, wall, cpu, rss in rows:
    counts = found_paths(name)
    hit = sum(min(counts.get(p, 0), len(rules)) for p, rules in planted.items())
    total = sum(len(r) for r in planted.values())
    rate[name] = mib / float(wall)
    shown = f"{rate[name]:.1f}"
    if name == "detect-secrets" and float(wall) >= ds_timeout - 1:
        shown = f"< {rate[name]:.1f} (stopped after {ds_timeout:.0f} s)"
    per_cpu = tree_bytes / 1e6 / max(float(cpu), 0.01)
    print(f"| {name} | {float(wall):.2f} | {float(cpu):.2f} | {shown} | {per_cpu:.0f} | {int(rss)/1024:.0f} | {hit}/{total} |")
print()
for peer in ("kingfisher", "detect-secrets"):
    bound = ">= " if peer == "detect-secrets" and float(rows[2][1]) >= ds_timeout - 1 else ""
    print(f"amiforge throughput / {peer}: {bound}{rate['amiforge'] / rate[peer]:.2f}x")
wall = float(rows[0][1])
print(f"whole audit of the 4 GiB image: {wall:.2f} s (target: under 10 s)")
PY

# What the package-file check (provenance: dpkg's md5sums) costs: the same audit of
# the same tree with dpkg's file digests renamed out of the provenance's sight
# (info/*.md5sums to *.md5sums-unread, the status file's Conffiles: field to
# Conffiles-unread:), so that the provenance has nothing to check and nothing to
# report while every other auditor reads the same files and the same bytes,
# PROVENANCE_RUNS times each, in turn.
if compgen -G "$tree/var/lib/dpkg/info/*.md5sums" > /dev/null; then
  bare=$dir/image-4g-no-provenance.img
  if [ ! -f "$bare" ] || [ "$image" -nt "$bare" ]; then
    echo "making $bare (the same tree with dpkg's file digests renamed)..." >&2
    rm -rf "$dir/no-provenance" && cp -a "$tree" "$dir/no-provenance"
    for sums in "$dir"/no-provenance/var/lib/dpkg/info/*.md5sums; do
      mv "$sums" "$sums-unread"
    done
    sed -i 's/^Conffiles:/Conffiles-unread:/' "$dir/no-provenance/var/lib/dpkg/status"
    rm -f "$bare" && truncate -s 4G "$bare" && mkfs.ext4 -q -F -d "$dir/no-provenance" "$bare"
    rm -rf "$dir/no-provenance"
  fi
  with=() without=()
  for _ in $(seq "${PROVENANCE_RUNS:-5}"); do
    with+=("$(measure amiforge-provenance "$target/amiforge" audit "$image" --format json --fail-on none)")
    without+=("$(measure amiforge-no-provenance "$target/amiforge" audit "$bare" --format json --fail-on none)")
  done
  python3 - "${#with[@]}" "${with[@]}" "${without[@]}" <<'PY'
import statistics, sys
n = int(sys.argv[1])
rows = [r.split() for r in sys.argv[2:]]
a, b = rows[:n], rows[n:]
med = lambda rs, i: statistics.median(float(r[i]) for r in rs)
print(f"provenance (md5sums of every package file) costs {100 * (med(a, 2) / med(b, 2) - 1):+.1f}% CPU "
      f"and {100 * (med(a, 1) / med(b, 1) - 1):+.1f}% wall (medians of {n} runs each: "
      f"{med(a, 2):.2f} vs {med(b, 2):.2f} CPU s; goal: at most +10%)")
PY
fi

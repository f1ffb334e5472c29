#!/usr/bin/env bash
# --batch-size throughput (docs/PERFORMANCE.md): the same 8 images protected one per PGD step and several
# per step, on the toy (64 px, 100 steps) and the tiny FLUX.1-Kontext at 256 px (8 steps), two interleaved
# repeats. Prints each process's wall time and the manifest's summed per-image seconds (protection only).
# Usage: bash bench/batch_throughput.sh [OUT]   (default runs/batch; faces from ../shared/data/faces)
set -euo pipefail
OUT=${1:-runs/batch}
PY=${PYTHON:-python}
FACES=${FACES:-../shared/data/faces}
rm -rf "$OUT/src_toy" "$OUT/src_tiny"; mkdir -p "$OUT/src_tiny"
"$PY" -m decontext toy-faces --count 8 --out "$OUT/src_toy" >/dev/null
find "$FACES" -maxdepth 1 -name '*.jpg' | sort | head -8 | xargs -I{} cp {} "$OUT/src_tiny/"
one() {  # model batch steps extra...
    local model=$1 bs=$2 steps=$3; shift 3
    local src="$OUT/src_${model}" dst="$OUT/out_${model}_${bs}"
    rm -rf "$dst"
    local s e; s=$(date +%s.%N)
    "$PY" -m decontext attack --model "$model" "$@" --input "$src" --output "$dst" --steps "$steps" --batch-size "$bs" --measure-draws 0 --no-progress >"$dst.log" 2>&1
    e=$(date +%s.%N)
    "$PY" - "$dst/manifest.json" "$model" "$bs" "$(echo "$e - $s" | bc)" <<'PYEOF'
import json, sys
images = json.load(open(sys.argv[1]))["images"]
seconds = sum(r["seconds"] for r in images.values())
print(f"{sys.argv[2]:<5} batch {sys.argv[3]}: wall {float(sys.argv[4]):6.1f} s, protection {seconds:6.2f} s for {len(images)} images ({seconds / len(images):.3f} s an image)")
PYEOF
}
for rep in 1 2; do
    for bs in 1 4 8; do one toy "$bs" 100; done
    for bs in 1 8; do one tiny "$bs" 8 --resolution 256; done
done

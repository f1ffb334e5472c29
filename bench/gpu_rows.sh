#!/usr/bin/env bash
# The GPU rows of docs/PERFORMANCE.md: one protection step of the real FLUX.1-Kontext architecture (12 B
# transformer, random weights, bf16) timed ours vs the official code's way vs a bare forward+backward.
#   bash bench/gpu_rows.sh [LOG_DIR] [ROWS]
# ROWS (default "512 512ckpt 1024 1024ckpt 24gb 24gb512"; also "qwen": Qwen-Image-Edit, 20 B): which rows to run; one log per row in LOG_DIR
# (default runs/gpu_bench). The 24 GB mode is the NF4 transformer (--quantize 4bit, needs bitsandbytes)
# with gradient checkpointing under a 24 GiB cap on everything the process allocates.
set -uo pipefail
LOG_DIR=${1:-runs/gpu_bench}
ROWS=${2:-"512 512ckpt 1024 1024ckpt 24gb 24gb512"}
mkdir -p "$LOG_DIR"
common=(--preset flux --device cuda --dtype bfloat16)
status=0
for row in $ROWS; do
  base=("${common[@]}")
  case $row in
    512)      args=(--size 512 --repeats 5 --with-separate) ;;
    512ckpt)  args=(--size 512 --repeats 5 --checkpointing) ;;
    1024)     args=(--size 1024 --repeats 3) ;;
    1024ckpt) args=(--size 1024 --repeats 3 --checkpointing) ;;
    24gb)     args=(--size 1024 --repeats 3 --checkpointing --quantize 4bit --memory-cap-gb 24) ;;
    24gb512)  args=(--size 512 --repeats 3 --checkpointing --quantize 4bit --memory-cap-gb 24) ;;
    qwen)     base=(--family qwen_image_edit --preset real --device cuda --dtype bfloat16)
              args=(--size 1024 --repeats 3 --checkpointing) ;;
    *) echo "unknown row $row" >&2; exit 2 ;;
  esac
  echo "== $row: python bench/bench_step.py ${base[*]} ${args[*]}"
  python bench/bench_step.py "${base[@]}" "${args[@]}" 2>&1 | tee "$LOG_DIR/$row.log" || status=1
done
exit $status

#!/usr/bin/env bash
# The GPU rows of docs/PERFORMANCE.md, one log per row, in at most DEADLINE_S seconds (default 480: a lent
# GPU's budget is ~15 minutes with start-up). Rows run in the order given; a row that would start after the
# deadline is skipped (and said so), and each row is cut at ROW_TIMEOUT_S (default 240).
#   bash bench/gpu_rows.sh [LOG_DIR] [ROWS]
# Default ROWS, most wanted first (issue 31):
#   photo1024 photo512  one photo end to end (build, protect, 8-bit save, manifest) with the fast preset, and the
#                       paper preset run for 40 steps and extrapolated to 800 (bench/photo.py)
#   protector512        an amortized protector (conv) on the real architecture: one training step at 512 px
#                       (batch 1, checkpointed) with its peak memory, and its inference on a 1024 px photo
#                       (bench/protector_step.py)
#   protector512edit    the same step with the through-the-edit objective (edit_away: 4 sampler steps of the
#                       editor, each checkpointed, backpropagated) and its peak memory (issue 41)
#   mem1024ckpt         ours vs bare, checkpointed at 1024, with the CUDA allocator's snapshot of one step each:
#                       what the checkpointed memory excess is made of (bench_step --memory-snapshot)
#   compile512          ours eager vs ours with every block torch.compiled, side by side
#   flux2               FLUX.2 [dev]'s real shapes (32 B), checkpointed at 1024: only on a GPU with > 80 GB
#   512 512ckpt 1024 1024ckpt 24gb 24gb512   the earlier rows (ours / official / bare), re-run with cuDNN
#                       attention off (the attacks' setting since 2026-11-24)
# Also: "qwen" (Qwen-Image-Edit, 20 B). Not here: Step1X-Edit's real shapes (its tiny builder writes the official
# single-file checkpoint to disk; 38 GB of random weights do not fit this budget).
set -uo pipefail
LOG_DIR=${1:-runs/gpu_bench}
ROWS=${2:-"photo1024 photo512 protector512 protector512edit mem1024ckpt compile512 flux2 1024ckpt 512 512ckpt 1024 24gb 24gb512"}
DEADLINE_S=${DEADLINE_S:-480}
ROW_TIMEOUT_S=${ROW_TIMEOUT_S:-240}
PY=${PYTHON:-python}
mkdir -p "$LOG_DIR"
common=(--preset flux --device cuda --dtype bfloat16)
began=$(date +%s)
status=0
for row in $ROWS; do
  elapsed=$(( $(date +%s) - began ))
  if [ "$elapsed" -ge "$DEADLINE_S" ]; then
    echo "== $row: skipped (${elapsed}s elapsed, deadline ${DEADLINE_S}s)" | tee "$LOG_DIR/$row.log"
    continue
  fi
  module=bench.bench_step
  base=("${common[@]}")
  case $row in
    photo1024) module=bench.photo; base=(--preset-model flux --device cuda --dtype bfloat16); args=(--size 1024 --json "$LOG_DIR/photo1024.json") ;;
    photo512)  module=bench.photo; base=(--preset-model flux --device cuda --dtype bfloat16); args=(--size 512 --json "$LOG_DIR/photo512.json") ;;
    protector512) module=bench.protector_step; base=(--preset-model flux --device cuda --dtype bfloat16)
                  args=(--size 512 --checkpointing --infer-size 1024 --json "$LOG_DIR/protector512.json") ;;
    protector512edit) module=bench.protector_step; base=(--preset-model flux --device cuda --dtype bfloat16)
                  args=(--size 512 --checkpointing --method edit_away --sample-steps 4 --repeats 2 --infer-size 1024
                        --json "$LOG_DIR/protector512edit.json") ;;
    mem1024ckpt) args=(--size 1024 --repeats 1 --checkpointing --variants ours bare --skip-memory --memory-snapshot "$LOG_DIR/snapshots") ;;
    compile512) args=(--size 512 --repeats 3 --compile --variants ours ours_compiled --skip-memory) ;;
    flux2)
      total=$("$PY" -c "import torch; print(torch.cuda.get_device_properties(0).total_memory // 2**30)" 2>/dev/null || echo 0)
      if [ "$total" -le 80 ]; then echo "== flux2: skipped (${total} GiB GPU; FLUX.2 [dev] needs more than 80)" | tee "$LOG_DIR/$row.log"; continue; fi
      base=(--family flux2 --preset real --device cuda --dtype bfloat16); args=(--size 1024 --repeats 2 --checkpointing) ;;
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
  left=$(( DEADLINE_S - elapsed ))
  limit=$(( left < ROW_TIMEOUT_S ? left : ROW_TIMEOUT_S ))
  echo "== $row: $PY -m $module ${base[*]} ${args[*]}   (limit ${limit}s)"
  timeout "$limit" "$PY" -m "$module" "${base[@]}" "${args[@]}" 2>&1 | tee "$LOG_DIR/$row.log"
  code=${PIPESTATUS[0]}
  [ "$code" = 124 ] && echo "== $row: cut at ${limit}s" | tee -a "$LOG_DIR/$row.log"
  [ "$code" = 0 ] || status=1
done
echo "== all rows: $(( $(date +%s) - began ))s"
exit $status

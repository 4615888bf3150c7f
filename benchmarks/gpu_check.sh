#!/usr/bin/env bash
# The one prepared GPU check of `amc bench` (see benchmarks/README.md).
#
# Run from the repository root on a machine with one CUDA GPU (the target is an H100) and torch,
# timm and PyYAML installed:
#
#     OUT=/some/folder bash benchmarks/gpu_check.sh
#
# With the project's device tool: `run` with the command `bash benchmarks/gpu_check.sh` (the tool
# sets $OUT and brings back what is written there). Budget: about 8 minutes on an H100.
#
# It writes into $OUT:
#   bench.json, bench.md                 ALBEF-base, batch 64: training at 256 px, evaluation at 384 px
#                                        (GradCAM layer 8), paths fast, reference (fp32) and
#                                        reference-tf32, equivalence on the full-size model
#   bench-tiny.json, bench-tiny.md       the equivalence checks on the tiny model (bf16 on the GPU)
#   bench-compile.json, bench-compile.md the fast path again with --compile (optional; may fail or time out)
#   itm-cuda-check.txt                   whether the engine's ITM objective runs on CUDA as `amc train` calls it
#   env.txt, *.log                       versions, nvidia-smi, the full logs
# The exit status is that of the main run (1 when an equivalence check fails).
set -euo pipefail
export PYTHONUNBUFFERED=1

cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
mkdir -p "$OUT"

# ------------------------------------------------------------------ environment (fail early and clearly)
{
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    git rev-parse --short HEAD 2>/dev/null || echo "no git"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || true
    "$PYTHON" - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0])
missing = []
for name in ("torch", "timm", "yaml"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as error:  # report every missing module at once
        missing.append(f"{name} ({error})")
if missing:
    sys.exit("missing Python modules: " + ", ".join(missing))
import torch
if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device")
print("device", torch.cuda.get_device_name(), "| CUDA", torch.version.cuda, "| bf16", torch.cuda.is_bf16_supported())
EOF
} 2>&1 | tee "$OUT/env.txt"

BENCH=("$PYTHON" -m amc bench --device cuda --text-len 25)

# ------------------------------------------------------------------ 0. does the engine's ITM objective run on CUDA?
# amc.objectives.ImageTextMatching draws hard negatives with torch.multinomial and the engine's CPU
# generator (amc train makes a CPU one); it moves the weights to the host first. This records that the
# objective runs on CUDA as `amc train` calls it (~10 s).
"$PYTHON" - <<'EOF' 2>&1 | tee "$OUT/itm-cuda-check.txt" || true
import torch
from amc.bench import make_train_batch, special_ids_for
from amc.models.albef import ALBEF
from amc.models.config import ModelConfig
from amc.objectives import ImageTextMatching, StepContext
config = ModelConfig.from_file("config/models/tiny.yaml")
with torch.device("cuda"):
    model = ALBEF(config)
batch = make_train_batch(config, 8, 12, 0, torch.device("cuda"))
ctx = StepContext(model, batch, 0.4, torch.Generator().manual_seed(0), False, special_ids_for(512))
try:
    out = ImageTextMatching()(ctx)
    print("ITM on CUDA with a CPU generator: OK", out.logs)
except Exception as error:
    print("ITM on CUDA with a CPU generator: FAILS ->", type(error).__name__, error)
EOF

# ------------------------------------------------------------------ 1. tiny model: equivalence only (~20 s)
"${BENCH[@]}" --model-config config/models/tiny.yaml --batch-size 64 --measure equivalence \
    --equivalence-cases 256 --out "$OUT/bench-tiny.json" --markdown "$OUT/bench-tiny.md" \
    2>&1 | tee "$OUT/bench-tiny.log" || echo "tiny-model equivalence FAILED (see bench-tiny.log)"

# ------------------------------------------------------------------ 2. the measurement (~3-4 min)
# Training: batch 64 at 256 px, 10 warm-up + 20 measured steps per path and objective set.
# Evaluation: 384 px, 512 cases per path (8 phrases per image), 2 warm-up batches;
# the reference at the released batch of 8, the fast path at 64 phrases per batch.
status=0
timeout 360 "${BENCH[@]}" --model-config config/models/albef-base.yaml --batch-size 64 \
    --image-res 256 --eval-image-res 384 --steps 20 --warmup 10 \
    --eval-cases 512 --eval-warmup 2 --eval-batch 64 --reference-eval-batch 8 --phrases-per-image 8 \
    --equivalence-cases 64 --paths fast,reference,reference-tf32 \
    --out "$OUT/bench.json" --markdown "$OUT/bench.md" 2>&1 | tee "$OUT/bench.log" || status=$?

# ------------------------------------------------------------------ 3. optional: the fast path compiled
# Only what is left of the budget; a failure here does not change the exit status.
timeout 120 "${BENCH[@]}" --model-config config/models/albef-base.yaml --batch-size 64 \
    --image-res 256 --eval-image-res 384 --steps 20 --warmup 10 \
    --eval-cases 512 --eval-warmup 2 --eval-batch 64 --phrases-per-image 8 \
    --paths fast --compile --measure train,eval \
    --out "$OUT/bench-compile.json" --markdown "$OUT/bench-compile.md" 2>&1 | tee "$OUT/bench-compile.log" \
    || echo "compiled run did not finish (see bench-compile.log)"

echo "main run exit status: $status"
exit "$status"

#!/usr/bin/env bash
# Train configs/distill-gpu.json and four variants side by side on one GPU, from a training pack.
#
#   scripts/gpu_train.sh PACK PAPER_CKPT OUT_DIR [MINUTES [NAME="--set k=v ..." ...]]
#
# PACK: `cryptoface train --config configs/distill-paper.json --make-pack PACK` (crops, SFace features,
# LFW guard applied). PAPER_CKPT: the authors' CryptoFaceNet4 checkpoint. MINUTES: training time per
# variant (the cosine learning-rate schedule is sized to it; default 6). NAME="--set ..." arguments replace
# the five built-in variants by your own (at most 6: the results come back as one file each). Each variant is one process
# (the model is small, so one process leaves the GPU mostly idle between kernel launches). Writes
# OUT_DIR/<variant>.npz (fused model), OUT_DIR/logs.tar.gz (logs, histories, data reports) and prints a
# table of the final hold-out losses, which is how a variant is chosen (never on LFW).
set -u
pack=${1:?training pack}
paper=${2:?paper checkpoint}
out=${3:?output folder}
minutes=${4:-6}
here=$(cd "$(dirname "$0")/.." && pwd)
runs=$(mktemp -d /tmp/cryptoface-runs.XXXX)
mkdir -p "$out"
export PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch, cv2, tqdm; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

common=(--config "$here/configs/distill-gpu.json" --set "pack=$pack" --set "paper_checkpoint=$paper"
        --set "schedule_minutes=$minutes" --set progress=false)
aug=(--set color_jitter=0.2 --set scale_jitter=0.05 --set shift_jitter=3)
declare -A variant=(
  [base]=""
  [aug]="${aug[*]}"
  [lr3e-4]="--set lr=3e-4"
  [cosface]="${aug[*]} --set w_margin=0.2"
  [scratch]="${aug[*]} --set init=scratch --set bn_mode=train --set bn_momentum=0.1 --set lr=2e-3 --set head_lr_mult=5"
)
if [ $# -gt 4 ]; then
  variant=()
  for spec in "${@:5}"; do variant[${spec%%=*}]="${spec#*=}"; done
fi
pids=()
for name in "${!variant[@]}"; do
  # shellcheck disable=SC2086  # the variant's --set pairs are meant to split
  python3 -m cryptoface train "${common[@]}" ${variant[$name]} \
    --set "out_dir=$runs/$name" --set "export_name=$name.npz" >"$runs/$name.log" 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done

for name in "${!variant[@]}"; do
  cp "$runs/$name/$name.npz" "$out/" 2>/dev/null || echo "variant $name: no model (see its log)"
done
tar -czf "$out/logs.tar.gz" -C "$runs" --exclude='*.pt' --exclude='*.npz' .
python3 - "$runs" <<'EOF'
import json, sys
from pathlib import Path
print(f"{'variant':12s} {'epochs':>6s} {'steps':>6s} {'img/s':>7s} {'val_rel':>9s} {'val_pair':>8s} {'proj':>7s} {'herpn_max':>9s}")
for d in sorted(p for p in Path(sys.argv[1]).iterdir() if p.is_dir()):
    h = [json.loads(x) for x in (d / "history.jsonl").read_text().splitlines()] if (d / "history.jsonl").is_file() else []
    if not h:
        print(f"{d.name:12s} no history"); continue
    last = h[-1]
    print(f"{d.name:12s} {len(h):6d} {sum(x['steps'] for x in h):6d} {last['images_per_s']:7.0f} "
          f"{last.get('val_relational', float('nan')):9.5f} {last.get('val_pair_accuracy', float('nan')):8.4f} "
          f"{last.get('projection', float('nan')):7.4f} "
          f"{max(x.get('herpn_max_train', 0) for x in h):9.1f}")
EOF
for name in "${!variant[@]}"; do echo "--- $name"; tail -n 3 "$runs/$name.log"; done
exit $status

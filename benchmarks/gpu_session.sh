#!/usr/bin/env bash
# One lent-GPU session's device work (benchmarks/gpu.md), as the two calls of the device tool that ran it.
# Prepared here (CPU), from the repository root:
#   python scripts/benchmark.py gpu-pack --output .devdata/cifar/cifar10_pack.npz      # 46.9 MiB
#   mkdir -p .devold && git archive <today's commit> sslguard benchmarks | tar -x -C .devold \
#       && rm -rf .devold/benchmarks/encoders                                            # the code measured against
#   cp -r ../shared/data/imagenette2-224 .devdata/                                       # 41.7 MB
#   pip download (README "device" notes) lightly==1.6.0 into .whl/, faiss-cpu into .whl2/
#   the committed encoders (49 MB) are moved out of the working tree for the calls: the tool carries 64 MiB
# Call 1 (carry .devdata/cifar .whl .devold; timeout 570 s):  bash benchmarks/gpu_session.sh encoder
# Call 2 (carry .devdata/imagenette2-224 .whl .whl2):         bash benchmarks/gpu_session.sh pipeline SECONDS
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl ${WHL2:-} || exit 1
T0=$SECONDS
LOG="$OUT/session_$1.log"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; nproc; } >>"$LOG" 2>&1

if [ "$1" = encoder ]; then
    LIMIT=${LIMIT:-570}
    PACK=.devdata/cifar/cifar10_pack.npz
    # today's recipe with the code of the commit before this work: batch 512, eager, per-tensor EMA loop
    PYTHONPATH=/tmp/site:$PWD/.devold python3 benchmarks/gpu_throughput.py --pack $PACK --label "before (46f8a2b)" \
        --batch-size 512 --steps 40 --epochs 4 --output "$OUT/throughput.jsonl" >>"$LOG" 2>&1
    # the paper-size encoder: 200 epochs, compiled step, batch 1024; ~50 s around training for export and evaluation
    run() {
        PYTHONPATH=/tmp/site:$PWD python3 scripts/benchmark.py gpu-encoder --pack $PACK --output "$OUT" \
            --work-dir /tmp/work --setting htba_50 --method byol --batch-size 1024 --epochs 200 \
            --hard-limit-s $((LIMIT - 55 - (SECONDS - T0))) "$@" >>"$LOG" 2>&1
    }
    run --compile || { echo "compiled run failed; eager" >>"$LOG"; rm -rf /tmp/work; run; }
    tail -c 3000 "$LOG"
elif [ "$1" = pipeline ]; then
    LIMIT=${2:-200}
    export PYTHONPATH=/tmp/site:$PWD
    timeout 75 python3 benchmarks/gpu_kmeans.py --output "$OUT/kmeans.json" >>"$LOG" 2>&1
    LEFT=$((LIMIT - 10 - (SECONDS - T0))); [ $LEFT -lt 20 ] && LEFT=20
    timeout $LEFT python3 scripts/detect.py --config detect_imagefolder \
        data.root=.devdata/imagenette2-224 data.split=val data.image_size=224 data.num_workers=12 \
        ssl.method=byol ssl.backbone=resnet18 ssl.epochs=30 ssl.batch_size=256 ssl.min_scale=0.2 \
        ssl.mixed_precision=bf16 ssl.channels_last=true ssl.checkpoint_every=0 cluster.k=auto \
        "detectors.classifier=[]" "fusion.detectors=[poisoncam, patchsearch]" attack.name=htba attack.target=0 \
        attack.rate=0.5 "attack.params={trigger_size: 50}" output_dir=/tmp/runs name=inet >>"$LOG" 2>&1
    echo "detect exit $?" >>"$LOG"
    cp /tmp/runs/inet/summary.json "$OUT/inet_summary.json" 2>/dev/null
    cat /tmp/runs/inet/.stages/*.json >"$OUT/inet_stages.jsonl" 2>/dev/null
    tail -c 4000 "$LOG"
fi

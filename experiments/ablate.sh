#!/usr/bin/env bash
# The CPU-scale ablation protocol behind `make ablate` (the Makefile trains the teacher first).
#
# With the ViTMatte teacher of $ABLATE_DIR/teacher (its best checkpoint by validation SAD),
# run in $ABLATE_LANES parallel lanes of one CPU thread each:
#   - every sweep of $ABLATE_SWEEPS as a Hydra multirun (`train.py -m $ABLATE_ARGS sweep=S
#     init_from=T teacher.ckpt=T`): each setting × each seed of conf/sweep/_base.yaml, every
#     student initialised from and distilled from the teacher, as in the paper;
#   - the training-free baselines ($ABLATE_BASELINES: `eval.py baseline=B split=val|test`),
#     scored by the same metrics code, into $ABLATE_DIR/baselines/<B>_<split>/metrics.json.
# Sweep jobs land in logs/train/multiruns/<sweep>_<date>_<time>/<job>/ (where `make report`
# reads them); each lane's output goes to $ABLATE_DIR/lanes/<item>.log. Exit code 1 when any
# item failed (the others still run to the end).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
ABLATE_DIR=${ABLATE_DIR:-logs/ablate}
ABLATE_ARGS=${ABLATE_ARGS:-experiment=ablate_cpu}
ABLATE_SWEEPS=${ABLATE_SWEEPS:-ablation_router ablation_ltrm ablation_keep_ratio ablation_objective ablation_topk_keep ablation_distill}
ABLATE_BASELINES=${ABLATE_BASELINES:-closed_form lkm knn fill_half}
ABLATE_LANES=${ABLATE_LANES:-2}
ARGS=${ARGS:-}

teacher=$(ls "$ABLATE_DIR"/teacher/checkpoints/best-step*.ckpt 2>/dev/null | tail -n 1 || true)
if [[ -z "$teacher" ]]; then
    echo "no teacher checkpoint under $ABLATE_DIR/teacher/checkpoints: run 'make ablate' (it trains one first)" >&2
    exit 1
fi
mkdir -p "$ABLATE_DIR/lanes"
export PYTHON ABLATE_DIR ABLATE_ARGS ABLATE_BASELINES ARGS teacher

run_item() {
    local item=$1 log="$ABLATE_DIR/lanes/$1.log" start=$SECONDS status=0
    if [[ $item == baselines ]]; then
        for b in $ABLATE_BASELINES; do
            for split in val test; do
                out="$ABLATE_DIR/baselines/${b}_${split}"
                [[ -f $out/metrics.json ]] && continue  # scored before (same data, no training)
                "$PYTHON" eval.py baseline="$b" split="$split" extras.threads=1 logger=none \
                    hydra.run.dir="$out" >>"$log" 2>&1 || status=$?
            done
        done
    else
        # shellcheck disable=SC2086  # ABLATE_ARGS and ARGS are lists of overrides
        "$PYTHON" train.py -m $ABLATE_ARGS sweep="$item" init_from="$teacher" teacher.ckpt="$teacher" \
            extras.threads=1 $ARGS >"$log" 2>&1 || status=$?
    fi
    if [[ $status -ne 0 ]]; then
        echo "== $item FAILED (exit $status) after $((SECONDS - start)) s; last lines of $log:"
        tail -n 20 "$log"
        return 1
    fi
    echo "== $item done in $((SECONDS - start)) s"
}
export -f run_item

start=$SECONDS
echo "ablation protocol: teacher $teacher; $ABLATE_LANES lanes: $ABLATE_SWEEPS baselines"
status=0
# the longest items first, so the lanes end together
printf '%s\n' $ABLATE_SWEEPS baselines | xargs -P "$ABLATE_LANES" -I{} bash -c 'run_item "$1"' _ {} || status=1
wall=$((SECONDS - start))
echo "$wall" >"$ABLATE_DIR/sweeps_wall_seconds.txt"
echo "ablation sweeps and baselines done in $wall s (exit $status); tables: make report"
exit $status

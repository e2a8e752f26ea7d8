#!/usr/bin/env bash
# The CPU-scale ablation protocol behind `make ablate` (the Makefile trains the teacher first).
#
# With the ViTMatte teacher of $ABLATE_DIR/teacher (its best checkpoint by validation SAD),
# run in $ABLATE_LANES parallel lanes of one CPU thread each:
#   - every sweep of $ABLATE_SWEEPS as a Hydra multirun (`train.py -m $ABLATE_ARGS sweep=S
#     init_from=T teacher.ckpt=T`): each setting × each seed of conf/sweep/_base.yaml, every
#     student initialised from and distilled from the teacher, as in the paper;
#   - the training-free baselines ($ABLATE_BASELINES: `eval.py baseline=B split=test`, and
#     closed_form and fill_half on split=val too), scored by the same metrics code, into
#     $ABLATE_DIR/baselines/<B>_<split>/metrics.json;
#   - `curve`: the default MEMatte student trained 3× as long, validated every 25 steps
#     ($ABLATE_DIR/curve): how the kept shares and the spread of p(global) evolve.
# Sweep jobs land in logs/train/multiruns/<sweep>_<date>_<time>/<job>/ (where `make report`
# reads them); each lane's output goes to $ABLATE_DIR/lanes/<item>.log. Exit code 1 when any
# item failed (the others still run to the end).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
ABLATE_DIR=${ABLATE_DIR:-logs/ablate}
ABLATE_ARGS=${ABLATE_ARGS:-experiment=ablate_cpu}
ABLATE_SWEEPS=${ABLATE_SWEEPS:-ablation_router ablation_ltrm ablation_topk_keep ablation_objective ablation_distill}
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
        # every baseline on the test split; on val (the teacher's learning curve) the ones that
        # take seconds, not minutes (large-kernel matting needs ~10 s an image)
        for run in $(printf "%s_test " $ABLATE_BASELINES) closed_form_val fill_half_val; do
            out="$ABLATE_DIR/baselines/$run"
            [[ -f $out/metrics.json ]] && continue  # scored before (same data, no training)
            "$PYTHON" eval.py baseline="${run%_*}" split="${run##*_}" extras.threads=1 logger=none \
                hydra.run.dir="$out" >>"$log" 2>&1 || status=$?
        done
    elif [[ $item == curve ]]; then
        [[ -f $ABLATE_DIR/curve/metrics.json ]] && { echo "== curve: finished before"; return 0; }
        # the default MEMatte student (local_global, conv, BATR 0.25, distilled) trained 3× as
        # long, validated every 25 steps: how the kept shares and p(global)'s spread evolve
        # shellcheck disable=SC2086
        "$PYTHON" train.py $ABLATE_ARGS model=mematte init_from="$teacher" teacher.ckpt="$teacher" \
            trainer.max_steps=300 trainer.val_check_interval=25 validate_before_training=true seed=1 \
            extras.threads=1 resume=never \
            tags="[ablate_cpu,curve]" hydra.run.dir="$ABLATE_DIR/curve" $ARGS >"$log" 2>&1 || status=$?
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
echo "ablation protocol: teacher $teacher; $ABLATE_LANES lanes: $ABLATE_SWEEPS baselines curve"
status=0
# the longest items first (ABLATE_SWEEPS is in that order), so the lanes end together
read -ra sweeps <<<"$ABLATE_SWEEPS"
items=("${sweeps[@]:0:3}" baselines "${sweeps[@]:3}" curve)
printf '%s\n' "${items[@]}" | xargs -P "$ABLATE_LANES" -I{} bash -c 'run_item "$1"' _ {} || status=1
wall=$((SECONDS - start))
echo "$wall" >"$ABLATE_DIR/sweeps_wall_seconds.txt"
echo "ablation sweeps and baselines done in $wall s (exit $status); tables: make report"
exit $status

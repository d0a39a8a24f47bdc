#!/usr/bin/env bash
# Fig. 3 of the DFC paper (Meulemans et al., NeurIPS 2021): the theory's conditions, stability
# and update alignments over training, on the student-teacher regression, for DFC, DFC-SS and
# DFC-SSA with trained and with fixed feedback, and DFA. Each examples/toy_<variant>.yaml is run
# with the ConditionMonitor of examples/fig3_monitor.yml, then the six panels are plotted.
#
#   bash examples/fig3.sh                          # as the paper: 300 forward epochs (hours)
#   EPOCHS=20 NUM_TRAIN=2500 bash examples/fig3.sh # a short version
#
# Environment overrides (defaults in brackets):
#   EPOCHS        forward-weight (wake) epochs [300]
#   NUM_TRAIN     training samples [5000, the configs' value]
#   VARIANTS      which toy variants [dfc dfc_ss dfc_ssa dfc_fixed dfc_ss_fixed dfc_ssa_fixed dfa]
#   LOGDIR        CSVLogger save_dir [lightning_logs/fig3]; runs land in
#                 $LOGDIR/toy_<variant>/$VERSION
#   VERSION       logger version folder [epochs<EPOCHS>_n<NUM_TRAIN>]; an existing one is overwritten
#   OUTPUT        figure path stem [docs/figures/fig3] -> .png and .pdf
#   MONITOR       monitor callback file [examples/fig3_monitor.yml]
#   MONITOR_DFA   the one for DFA [examples/fig3_monitor_dfa.yml: no controller stability, no SSA
#                 angle (DFA runs no controller), gn_damping 0 as the reference's DFA config]
#   EXTRA_ARGS    more arguments for every `fit` (e.g. "--model.init_args.feedback.pretrain_epochs=20";
#                 dynamics/feedback overrides fail on DFA, which has neither: prefer VARIANTS then)
#   PLOT_ONLY     1: do not train, only plot the existing runs [0]
#   LIGHTNING_DFC the command [lightning-dfc, else "$PYTHON -m lightning_dfc"]
#   OMP_NUM_THREADS torch threads [1: the networks are tiny, more threads only add overhead]
# Paths are relative to the repository root (the script changes to it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

EPOCHS=${EPOCHS:-300}
NUM_TRAIN=${NUM_TRAIN:-5000}
VARIANTS=${VARIANTS:-"dfc dfc_ss dfc_ssa dfc_fixed dfc_ss_fixed dfc_ssa_fixed dfa"}
LOGDIR=${LOGDIR:-lightning_logs/fig3}
VERSION=${VERSION:-epochs${EPOCHS}_n${NUM_TRAIN}}
OUTPUT=${OUTPUT:-docs/figures/fig3}
MONITOR=${MONITOR:-examples/fig3_monitor.yml}
MONITOR_DFA=${MONITOR_DFA:-examples/fig3_monitor_dfa.yml}
EXTRA_ARGS=${EXTRA_ARGS:-}
PLOT_ONLY=${PLOT_ONLY:-0}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if [[ -z "${LIGHTNING_DFC:-}" ]]; then
  if command -v lightning-dfc >/dev/null 2>&1; then LIGHTNING_DFC=lightning-dfc
  else LIGHTNING_DFC="${PYTHON:-python} -m lightning_dfc"; fi
fi

label() {
  case "$1" in
    dfc) echo "DFC" ;; dfc_ss) echo "DFC-SS" ;; dfc_ssa) echo "DFC-SSA" ;;
    dfc_fixed) echo "DFC (fixed)" ;; dfc_ss_fixed) echo "DFC-SS (fixed)" ;;
    dfc_ssa_fixed) echo "DFC-SSA (fixed)" ;; dfa) echo "DFA" ;; *) echo "$1" ;;
  esac
}

runs=()
labels=()
for v in $VARIANTS; do
  config=examples/toy_${v}.yaml
  [[ -f $config ]] || { echo "fig3.sh: no config $config" >&2; exit 2; }
  if [[ $PLOT_ONLY != 1 ]]; then
    echo "=== $v: $EPOCHS forward epochs, $NUM_TRAIN samples -> $LOGDIR/toy_$v/$VERSION"
    start=$(date +%s)
    monitor=$MONITOR
    [[ $v == dfa ]] && monitor=$MONITOR_DFA
    # shellcheck disable=SC2086  # LIGHTNING_DFC and EXTRA_ARGS are word lists
    $LIGHTNING_DFC fit --config "$config" \
      "--trainer.callbacks+=$monitor" \
      --trainer.max_epochs="$EPOCHS" \
      --trainer.logger.init_args.save_dir="$LOGDIR" \
      --trainer.logger.init_args.version="$VERSION" \
      --trainer.enable_progress_bar=false \
      --data.num_train="$NUM_TRAIN" \
      $EXTRA_ARGS
    echo "=== $v done in $(( $(date +%s) - start )) s"
  fi
  runs+=("$LOGDIR/toy_$v/$VERSION")
  labels+=("$(label "$v")")
done

# shellcheck disable=SC2086
$LIGHTNING_DFC plot "${runs[@]}" --labels "${labels[@]}" --output "$OUTPUT" --fig3 \
  --title "Fig. 3 (student-teacher): $EPOCHS forward epochs, $NUM_TRAIN training samples"

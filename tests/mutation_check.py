"""Mutation check of the rewritten tests (issue 22): each entry plants one deliberate bug in the
package (a flipped sign, a dropped term, a wrong seed), runs the tests that should catch it, and
expects them to fail. The source file is restored after each run, also on an interruption.

    .venv/bin/python tests/mutation_check.py            # all mutations
    .venv/bin/python tests/mutation_check.py --list     # what they are
    .venv/bin/python tests/mutation_check.py resume-seed sleep-sign

Exit status 1 if a mutation survives (its tests pass) or no longer applies (the code it changes
has moved: update the entry). Not part of the test suite: each entry runs pytest once.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str  # the bug, in words
    path: str  # relative to the repository
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest node ids that must fail


MUTATIONS = [
    Mutation("linear-sleep-double-projection", "the linearised sleep's orthogonal draw keeps its part along V (counted twice)",
             "lightning_dfc/core/linear_sleep.py",
             "lifted = torch.bmm(basis, rho_sum[:, start:start + width] - projected)",
             "lifted = torch.bmm(basis, rho_sum[:, start:start + width])",
             ("tests/core/test_linear_sleep.py::test_equals_the_full_simulation_to_first_order_in_sigma",)),
    Mutation("linear-sleep-no-orthogonal", "the linearised sleep leaves out the noise that never reaches the output",
             "lightning_dfc/core/linear_sleep.py",
             "per_sample = torch.baddbmm(lifted, draws, factor_t) if xis is None else lifted.add_(x_b)",
             "per_sample = lifted",
             ("tests/core/test_numerics.py::test_fast_noisy_update_has_the_exact_mean_and_spread[dfc_sleep-sleep]",)),
    Mutation("target-loss-ignored", "updates.target_loss: sum is ignored (strong_dfc's nudge made B times smaller)",
             "lightning_dfc/core/methods/base.py",
             "return dataclasses.replace(self.target, loss=updates.target_loss)",
             "return self.target",
             ("tests/reference/test_reference.py::test_update_equals_the_authors[dfc_noisy_wake]",)),
    Mutation("fused-signal-unscaled", "FusedSignalState's signals summed without their scale (tanh layers' signals halved)",
             "lightning_dfc/core/accumulators.py",
             "self.signal_sum[i].add_(self.signals[i], alpha=self.scales[i])",
             "self.signal_sum[i].add_(self.signals[i])",
             ("tests/core/test_fused_state.py",)),
    Mutation("fused-signal-basal-voltage", "FusedSignalState's signal against the basal voltage, not its rate (sigmoid forgotten)",
             "lightning_dfc/core/state.py",
             "basal.sigmoid_() if kind == \"sigmoid\"",
             "basal if kind == \"sigmoid\"",
             ("tests/core/test_fused_state.py",)),
    Mutation("resume-seed", "a resumed run seeds each epoch's noise from the resume point, not the run's start",
             "lightning_dfc/shell/phases.py",
             "self._dfc_epoch_seed(self.current_epoch)",
             "self._dfc_epoch_seed(self.current_epoch - (self._dfc_resume_epoch or 0))",
             ("tests/shell/test_resume.py::test_a_resume_with_the_same_settings_is_the_uninterrupted_run",)),
    Mutation("resume-schedule", "a permitted new schedule is ignored: the run keeps the checkpoint's sleep_after",
             "lightning_dfc/shell/phases.py",
             "        self._dfc_diverged_in_a_row = int(state.get(\"diverged_in_a_row\", 0))\n",
             "        self._dfc_diverged_in_a_row = int(state.get(\"diverged_in_a_row\", 0))\n"
             "        if \"schedule\" in state:\n"
             "            self.dfc_schedule = dataclasses.replace(self.dfc_schedule, "
             "sleep_after=state[\"schedule\"][\"sleep_after\"])\n",
             ("tests/shell/test_resume.py::test_a_new_schedule_when_permitted",)),
    Mutation("load-resets-feedback", "loading a checkpoint re-initialises the feedback weights",
             "lightning_dfc/shell/phases.py",
             "        self._dfc_diverged_in_a_row = int(state.get(\"diverged_in_a_row\", 0))\n",
             "        self._dfc_diverged_in_a_row = int(state.get(\"diverged_in_a_row\", 0))\n"
             "        checkpoint[\"state_dict\"] = {k: (v * 0 if k.startswith(\"dfc_feedback\") else v) "
             "for k, v in checkpoint[\"state_dict\"].items()}\n",
             ("tests/shell/test_resume.py::test_loading_weights_for_inference_is_not_a_resume",)),
    Mutation("angle-layer-without-bias", "the per-layer angles leave out the biases",
             "lightning_dfc/core/diagnostics.py",
             "return AlignmentAngles([angle(a, b) for a, b in zip(ga, gb)], angle(ta, tb))",
             "return AlignmentAngles([angle(a[:1], b[:1]) for a, b in zip(ga, gb)], angle(ta, tb))",
             ("tests/core/test_control.py::test_random_feedback_angle_and_condition_2_are_the_recomputed_ones",)),
    Mutation("condition-2-one-direction", "Condition 2 projects onto the first singular direction of J only",
             "lightning_dfc/core/diagnostics.py",
             "coords = (vh * keep) @ qbar",
             "coords = (vh[:, :1] * keep[:, :1]) @ qbar",
             ("tests/core/test_control.py::test_random_feedback_angle_and_condition_2_are_the_recomputed_ones",)),
    Mutation("monitor-condition-2-one-direction", "Condition 2 projects onto J's first singular direction, "
             "seen by the monitor's logged value", "lightning_dfc/core/diagnostics.py",
             "coords = (vh * keep) @ qbar",
             "coords = (vh[:, :1] * keep[:, :1]) @ qbar",
             ("tests/shell/test_monitor.py::test_logged_condition_2_is_the_recomputed_one",)),
    Mutation("monitor-drops-a-sample", "the monitor measures the conditions without the batch's first sample",
             "lightning_dfc/shell/callbacks.py",
             "        xs = x if self.max_samples is None else x[: self.max_samples]\n        ff = feedforward(params, xs)\n",
             "        xs = x[1:] if self.max_samples is None else x[: self.max_samples]\n        ff = feedforward(params, xs)\n",
             ("tests/shell/test_monitor.py::test_logged_condition_2_is_the_recomputed_one",)),
    Mutation("angle-sign", "the angle is taken against +dH/dW (one side's sign flipped)",
             "lightning_dfc/core/control_loss.py",
             "    return alignment_angles(ta, tb)\n",
             "    return alignment_angles(ta, [-t for t in tb])\n",
             ("tests/core/test_control.py::test_random_feedback_angle_and_condition_2_are_the_recomputed_ones",)),
    Mutation("sleep-sum-sign", "the sleep rule's sum v^A u^T has its sign flipped (float64 state)",
             "lightning_dfc/core/accumulators.py",
             "self._total.addmm_(masked(v_apical, self.keep).T, paired)",
             "self._total.addmm_(masked(v_apical, self.keep).T, paired, alpha=-1)",
             ("tests/benchmarks/test_ab_simulate.py::test_old_and_new_simulate_give_the_same_update_under_one_seed",)),
    Mutation("gpu-other-noise", "gpu.py draws the device side's noise from the device's own generator",
             "benchmarks/gpu.py",
             "                with same_noise(11):\n                    cos, norm = compare(fn(model, x, y), reference[phase])",
             "                cos, norm = compare(fn(model, x, y), reference[phase])",
             ("tests/benchmarks/test_benchmarks.py::test_gpu_script_agreement_check_can_fail",)),
    Mutation("gpu-compare-blind", "gpu.py's comparison ignores the angle between the two sides' updates",
             "benchmarks/gpu.py",
             "worst_cos = max(worst_cos, 1 - cos)",
             "worst_cos = max(worst_cos, 0 * (1 - cos))",
             ("tests/benchmarks/test_benchmarks.py::test_gpu_script_agreement_check_can_fail",)),
    Mutation("eval-loss-of-wrong-labels", "the evaluation loss is taken against the labels shifted by one sample",
             "lightning_dfc/shell/module.py",
             "loss_metric(loss_value(output, y, self.dfc_loss))",
             "loss_metric(loss_value(output, y.roll(1, 0), self.dfc_loss))",
             ("tests/shell/test_cli.py::test_test_from_checkpoint",)),
    Mutation("eval-acc-of-other-batch", "the evaluation accuracy is taken on the outputs of the reversed batch",
             "lightning_dfc/shell/module.py",
             "            acc(output, y)\n",
             "            acc(output.flip(0), y)\n",
             ("tests/shell/test_cli.py::test_test_from_checkpoint",)),
    Mutation("float32-wake-unapplied", "a float32 model's wake update is not written to its gradients",
             "lightning_dfc/shell/steps.py",
             "        for p, g in zip(params_list, tensors):\n            p.grad = g.to(p.dtype)\n",
             "        for p, g in zip(params_list, tensors):\n"
             "            p.grad = g.to(p.dtype) * (p.dtype != torch.float32)\n",
             ("tests/shell/test_module.py::test_float32_precision_trains",)),
    Mutation("simulation-dtype-ignored", "a float32 model ignores dtype: float64 and simulates in float32",
             "lightning_dfc/core/dynamics.py",
             "    if getattr(torch, cfg.dtype) != x.dtype:\n",
             "    if getattr(torch, cfg.dtype) != x.dtype and x.dtype != torch.float32:\n",
             ("tests/core/test_simulation_dtype.py::test_float32_model_can_simulate_in_float64",)),
    Mutation("float32-sim-cast-feedforward", "a float64 model's float32 simulation starts from its float64 "
             "feedforward pass cast down, not recomputed",
             "lightning_dfc/core/dynamics.py",
             "    result = simulate(params_in, x_in, feedforward(params_in, x_in), cast(target),",
             "    result = simulate(params_in, x_in, type(ff)(*[tuple(cast(t) for t in part) for part in ff]), cast(target),",
             ("tests/core/test_dynamics.py::test_float32_feedback_update",)),
    Mutation("monitor-c2ss-at-feedforward", "the monitor's steady-state Condition 2 is taken at the feedforward point",
             "lightning_dfc/shell/callbacks.py",
             "C.condition_2_at_steady_state(params, steady.v).mean()",
             "C.condition_2_at_steady_state(params, feedforward(params, x).v).mean()",
             ("tests/core/test_strong.py::test_condition_monitor_logs_the_control_loss_angle",)),
    Mutation("monitor-h-angle-to-bp", "the monitor's H angle is taken against the BP update",
             "lightning_dfc/shell/callbacks.py",
             "            references[\"h\"] = self._control_loss_reference(pl_module, params, x, y, loss)\n",
             "            self._control_loss_reference(pl_module, params, x, y, loss)\n"
             "            references[\"h\"] = bp_update(params, x, y, loss).tensors()\n",
             ("tests/core/test_strong.py::test_condition_monitor_logs_the_control_loss_angle",)),
    Mutation("monitor-steady-alpha", "the monitor solves the steady state with twice the leak alpha",
             "lightning_dfc/shell/callbacks.py",
             "        alpha = pl_module.dfc_dynamics.alpha\n        steady = C.controlled_steady_state",
             "        alpha = 2 * pl_module.dfc_dynamics.alpha\n        steady = C.controlled_steady_state",
             ("tests/core/test_strong.py::test_condition_monitor_logs_the_control_loss_angle",)),
    Mutation("sleep-sign-fast", "the sleep rule's sum has its sign flipped (the fast numerics' split sum)",
             "lightning_dfc/core/accumulators.py",
             "        return torch.addmm(self.noise_sum.T, self.feedback, self.control_sum.T)\n",
             "        return -torch.addmm(self.noise_sum.T, self.feedback, self.control_sum.T)\n",
             # (DFC's fast sleep is linearised now, linear_sleep: Strong-DFC's sleep keeps the split sum)
             ("tests/core/test_numerics.py::test_fast_noisy_update_has_the_exact_mean_and_spread[strong_dfc_ss_sleep-sleep]",)),
    Mutation("wake-zeroes-first-layer", "the wake update of the first layer's W_1, b_1 is zeroed",
             "lightning_dfc/shell/steps.py",
             "        for p, g in zip(params_list, tensors):\n            p.grad = g.to(p.dtype)\n",
             "        for k, (p, g) in enumerate(zip(params_list, tensors)):\n            p.grad = g.to(p.dtype) * (k >= 2)\n",
             ("tests/shell/test_mixin.py::test_example_script_runs",)),
    Mutation("dfc-rule-sign", "DFC's continuous rule has its sign flipped",
             "lightning_dfc/core/rules.py",
             "    scale = -2.0 / (x.shape[0] * steps)\n",
             "    scale = 2.0 / (x.shape[0] * steps)\n",
             ("tests/core/test_directions.py::test_the_plain_update_descends_and_its_flip_ascends[dfc]",
              "tests/core/test_directions.py::test_the_plain_update_descends_and_its_flip_ascends[strong_dfc]",
              "tests/core/test_directions.py::test_the_module_update_descends_and_its_flip_ascends[dfc]")),
    Mutation("steady-state-rule-sign", "the steady-state rule (DFC-SS, DFC-SSA, Strong-DFC two phases) flipped",
             "lightning_dfc/core/rules.py",
             "    return Update(*outer_updates(signals, pres, params.biases, -2.0 / batch))\n",
             "    return Update(*outer_updates(signals, pres, params.biases, 2.0 / batch))\n",
             ("tests/core/test_directions.py::test_the_plain_update_descends_and_its_flip_ascends[dfc_ss]",
              "tests/core/test_directions.py::test_the_plain_update_descends_and_its_flip_ascends[dfc_ssa_fixed]",
              "tests/core/test_directions.py::test_the_module_update_descends_and_its_flip_ascends[strong_dfc_ss]")),
    Mutation("dfa-sign", "DFA's update has its sign flipped",
             "lightning_dfc/core/rules.py",
             "    return Update(*outer_updates(signals, pres, params.biases, 2.0 / batch), {\"steps\": 0.0})\n",
             "    return Update(*outer_updates(signals, pres, params.biases, -2.0 / batch), {\"steps\": 0.0})\n",
             ("tests/core/test_directions.py::test_the_plain_update_descends_and_its_flip_ascends[dfa]",
              "tests/core/test_directions.py::test_the_module_update_descends_and_its_flip_ascends[dfa]")),
    Mutation("dfc-hidden-layers-zeroed", "DFC's update of every layer but the output is zeroed",
             "lightning_dfc/core/rules.py",
             "        weights.append(scale * outer)\n",
             "        weights.append(scale * outer * (i == params.num_layers - 1))\n",
             ("tests/core/test_directions.py::test_every_layer_moves_along_the_loss_gradient[dfc]",)),
    Mutation("module-lr-sign", "the module's forward optimizer steps up the update (normalised learning rate negated)",
             "lightning_dfc/shell/steps.py",
             "        for p, g in zip(params_list, tensors):\n            p.grad = g.to(p.dtype)\n",
             "        for p, g in zip(params_list, tensors):\n            p.grad = -g.to(p.dtype)\n",
             ("tests/core/test_directions.py::test_the_module_update_descends_and_its_flip_ascends[dfc]",
              "tests/core/test_directions.py::test_the_module_update_descends_and_its_flip_ascends[bp]")),
    # the example configs' training test (test_configs.py): each flipped rule fails its example's
    Mutation("example-dfc-rule-sign", "DFC's continuous rule flipped, seen by the example configs",
             "lightning_dfc/core/rules.py",
             "    scale = -2.0 / (x.shape[0] * steps)\n",
             "    scale = 2.0 / (x.shape[0] * steps)\n",
             ("tests/shell/test_configs.py::test_example_trains[mnist_dfc]",)),
    Mutation("example-fixed-rule-sign", "DFC's continuous rule flipped, seen by a fixed-feedback example",
             "lightning_dfc/core/rules.py",
             "    scale = -2.0 / (x.shape[0] * steps)\n",
             "    scale = 2.0 / (x.shape[0] * steps)\n",
             ("tests/shell/test_configs.py::test_example_trains[fmnist_dfc_fixed]",)),
    Mutation("example-steady-state-rule-sign", "the steady-state rule flipped, seen by the example configs",
             "lightning_dfc/core/rules.py",
             "    return Update(*outer_updates(signals, pres, params.biases, -2.0 / batch))\n",
             "    return Update(*outer_updates(signals, pres, params.biases, 2.0 / batch))\n",
             ("tests/shell/test_configs.py::test_example_trains[mnist_autoencoder_dfc_ssa]",)),
    Mutation("example-dfa-sign", "DFA's update flipped, seen by the example configs",
             "lightning_dfc/core/rules.py",
             "    return Update(*outer_updates(signals, pres, params.biases, 2.0 / batch), {\"steps\": 0.0})\n",
             "    return Update(*outer_updates(signals, pres, params.biases, -2.0 / batch), {\"steps\": 0.0})\n",
             ("tests/shell/test_configs.py::test_example_trains[toy_dfa]",)),
    Mutation("example-module-lr-sign", "the module's optimizer steps up the update, seen by the example configs",
             "lightning_dfc/shell/steps.py",
             "        for p, g in zip(params_list, tensors):\n            p.grad = g.to(p.dtype)\n",
             "        for p, g in zip(params_list, tensors):\n            p.grad = -g.to(p.dtype)\n",
             ("tests/shell/test_configs.py::test_example_trains[mnist_strong_dfc]",)),
    Mutation("strong-module-lr-sign", "the module's optimizer steps up the update, seen by the single-phase "
             "Strong-DFC training test", "lightning_dfc/shell/steps.py",
             "        for p, g in zip(params_list, tensors):\n            p.grad = g.to(p.dtype)\n",
             "        for p, g in zip(params_list, tensors):\n            p.grad = -g.to(p.dtype)\n",
             ("tests/core/test_strong.py::test_strong_variants_train_and_log_the_control_loss[strong_dfc]",)),
    Mutation("strong-ss-rule-sign", "the steady-state rule flipped, seen by the two-phase Strong-DFC training test",
             "lightning_dfc/core/rules.py",
             "    return Update(*outer_updates(signals, pres, params.biases, -2.0 / batch))\n",
             "    return Update(*outer_updates(signals, pres, params.biases, 2.0 / batch))\n",
             ("tests/core/test_strong.py::test_strong_variants_train_and_log_the_control_loss[strong_dfc_ss]",)),
    Mutation("first-hour-pretrain-levelled", "the pre-training goes on where Condition 2 has levelled off",
             "lightning_dfc/shell/phases.py",
             "value - previous < cfg.pretrain_min_gain\n",
             "value - previous < -1.0\n",
             ("tests/benchmarks/test_benchmarks.py::test_first_hour_records_resume_and_table",)),
    Mutation("module-wake-step-sign", "the training step writes the negated wake update into the forward weights' "
             ".grad, seen by the sleep-and-wake training test", "lightning_dfc/shell/steps.py",
             "        for p, g in zip(params_list, tensors):\n            p.grad = g.to(p.dtype)\n",
             "        for p, g in zip(params_list, tensors):\n            p.grad = -g.to(p.dtype)\n",
             ("tests/shell/test_module.py::test_sleep_trains_feedback_and_wake_trains_forward",)),
    Mutation("mixin-wake-step-sign", "the training step writes the negated wake update, seen by the wrapped "
             "LightningModule's training test", "lightning_dfc/shell/steps.py",
             "        for p, g in zip(params_list, tensors):\n            p.grad = g.to(p.dtype)\n",
             "        for p, g in zip(params_list, tensors):\n            p.grad = -g.to(p.dtype)\n",
             ("tests/shell/test_mixin.py::test_wrapped_model_trains_with_dfc_and_keeps_its_own_hooks",)),
    Mutation("mixin-script-wake-step-sign", "the training step writes the negated wake update, seen by the "
             "wrapping example script's test", "lightning_dfc/shell/steps.py",
             "        for p, g in zip(params_list, tensors):\n            p.grad = g.to(p.dtype)\n",
             "        for p, g in zip(params_list, tensors):\n            p.grad = -g.to(p.dtype)\n",
             ("tests/shell/test_mixin.py::test_example_script_runs",)),
    Mutation("plain-wake-step-sign", "the plain API's backward writes the negated wake update into .grad, "
             "seen by the plain-PyTorch example's test", "lightning_dfc/core/plain.py",
             "            p.grad = g.to(p.dtype)\n",
             "            p.grad = -g.to(p.dtype)\n",
             ("tests/core/test_plain_api.py::test_the_example_runs",)),
    Mutation("module-sleep-step-sign", "the training step writes the negated sleep update into Q's .grad",
             "lightning_dfc/core/clipping.py",
             "        q.grad = g.to(q.dtype)\n",
             "        q.grad = -g.to(q.dtype)\n",
             ("tests/shell/test_module.py::test_sleep_trains_feedback_and_wake_trains_forward",)),
    Mutation("mixin-untrained-unchecked", "the mixin accepts a host whose other parameters would never train",
             "lightning_dfc/shell/mixin.py",
             "    if not left:\n        return\n",
             "    if True:\n        return\n",
             ("tests/shell/test_mixin.py::test_parameters_dfc_would_not_train_are_refused_by_name",)),
    Mutation("ckpt-last-unresolved", "--ckpt_path last is left to Lightning, which starts a new run from scratch",
             "lightning_dfc/shell/cli.py",
             "        if path is not None:\n            self.config[subcommand][\"ckpt_path\"] = path\n",
             "        if False:\n            self.config[subcommand][\"ckpt_path\"] = path\n",
             ("tests/shell/test_cli.py::test_ckpt_path_last_resumes_the_newest_run",)),
    Mutation("skips-logged-only-when-skipped", "the skip counts are logged only in epochs that skipped a batch",
             "lightning_dfc/shell/steps.py",
             "        self.log(f\"{prefix}/skipped_batches\", float(skipped), on_step=False, on_epoch=True)\n",
             "        if skipped:\n            self.log(f\"{prefix}/skipped_batches\", float(skipped), on_step=False, on_epoch=True)\n",
             ("tests/shell/test_module.py::test_max_epochs_counts_wake_epochs_and_phases_are_logged",)),
    Mutation("ddp-local-divergence", "each rank decides alone whether to skip a diverged batch",
             "lightning_dfc/shell/distributed.py",
             "    return bool(flat[0] > 0)\n",
             "    return flag\n",
             ("tests/shell/test_ddp.py::test_a_batch_diverged_on_one_rank_is_skipped_on_every_rank",)),
    Mutation("stop-message-in-lightning-epochs", "Lightning's stop message is left in its own epoch count",
             "lightning_dfc/shell/phases.py",
             "            install_stop_message(self._dfc_stop_message)\n",
             "            pass\n",
             ("tests/shell/test_wake_epoch_console.py::test_a_fit_speaks_in_wake_epochs",)),
    Mutation("validation-in-every-epoch", "the validation pass runs after pre-training and sleep epochs too",
             "lightning_dfc/shell/epochs.py",
             "    trainer.limit_val_batches = limit if run else 0\n",
             "    trainer.limit_val_batches = limit\n",
             ("tests/shell/test_wake_epoch_console.py::test_a_fit_speaks_in_wake_epochs",)),
    Mutation("checkpoints-named-by-lightning-epoch", "checkpoints keep Lightning's epoch=N-step=M names",
             "lightning_dfc/shell/epochs.py",
             "            callback.filename = f\"wake_epoch={wake_epoch}\"\n",
             "            pass\n",
             ("tests/shell/test_wake_epoch_console.py::test_a_fit_speaks_in_wake_epochs",)),
    Mutation("stale-stop-message-speaks", "a filter left by a fit that raised rewrites the next fit's message",
             "lightning_dfc/shell/epochs.py",
             "        if match and self.active():\n",
             "        if match:\n",
             ("tests/shell/test_wake_epoch_console.py::test_a_fit_that_raised_leaves_no_filter_that_speaks",)),
    Mutation("plain-door-unclipped", "the plain door writes the forward update unclipped",
             "lightning_dfc/core/plain.py",
             "            forward_clip_groups(self.net, self.method.forward_clip_grouping(self.updates)), self.updates.clip_norm)\n",
             "            forward_clip_groups(self.net, self.method.forward_clip_grouping(self.updates)), None) + 3\n",
             ("tests/shell/test_three_doors.py::test_the_three_doors_train_alike",)),
    Mutation("plain-door-feedback-unclipped", "the plain door writes the feedback update unclipped",
             "lightning_dfc/core/plain.py",
             "        return clip_groups(groups, self.feedback.clip_norm)\n",
             "        return 1 + clip_groups(groups, None)  # counted as clipped, not clipped\n",
             ("tests/shell/test_three_doors.py::test_the_doors_sleep_alike",)),
    Mutation("plain-door-lr-not-divided", "the plain door's forward_lr does not divide by lambda",
             "lightning_dfc/core/plain.py",
             "        return lr / self.target_stepsize if self.method.normalize_lr(self.updates) else lr\n",
             "        return lr\n",
             ("tests/shell/test_three_doors.py::test_the_three_doors_train_alike",)),
    Mutation("summary-plural-fixed", "the summary's epoch counts always take the plural",
             "lightning_dfc/shell/epochs.py",
             "    return f\"{count} {noun}\" if count == 1 else f\"{count} {nouns or noun + 's'}\"\n",
             "    return f\"{count} {nouns or noun + 's'}\"\n",
             ("tests/shell/test_wake_epoch_console.py::test_a_fit_speaks_in_wake_epochs",)),
    Mutation("drive-recursion-no-decay", "the in-place noisy drive re-adds Qbar c without taking off the decayed old one",
             "lightning_dfc/core/dynamics.py",
             "self.buffer.addmm_(torch.add(control, self.drive_control, alpha=-self.decay), self.qbar_t)",
             "self.buffer.addmm_(control, self.qbar_t)",
             ("tests/core/test_fused_state.py::test_fused_signal_state_forms_the_same_signals",)),
    Mutation("cli-resume-takes-checkpoint-settings", "a resumed CLI fit builds the model from the checkpoint's hyperparameters",
             "lightning_dfc/shell/cli.py",
             "            self.config[subcommand][\"model\"] = given\n",
             "            pass\n",
             ("tests/shell/test_cli.py::test_a_resume_from_the_command_line_keeps_its_changed_settings",)),
    Mutation("resume-settings-unchecked", "a resume compares only variant, sizes and schedule",
             "lightning_dfc/shell/resume.py",
             "    refused = [c for c in settings if c[0] not in RESUME_NOTICE_ONLY and c[0] not in RESUME_CHECKED_APART]\n",
             "    refused = []\n",
             ("tests/shell/test_resume.py::test_a_changed_setting_is_named_and_refused",)),
    Mutation("resume-lr-not-applied", "a resume keeps the checkpoint's learning rate over the configured one",
             "lightning_dfc/shell/resume.py",
             "                group[setting] = tuple(new) if isinstance(group.get(setting), tuple) else new\n",
             "                pass\n",
             ("tests/shell/test_resume.py::test_a_changed_learning_rate_is_named_and_used",)),
    Mutation("fast-dev-run-half-the-batches", "fast_dev_run=N stops after N optimizer steps (N / 2 batches)",
             "lightning_dfc/shell/phases.py",
             "            set_max_steps(self.trainer, 2 * int(self.trainer.fast_dev_run))\n",
             "            pass\n",
             ("tests/shell/test_wake_epoch_console.py::test_fast_dev_run_n_runs_n_batches_with_their_validation_and_a_summary",)),
    Mutation("cli-type-error-dump", "a wrong type's error is jsonargparse's first line",
             "lightning_dfc/shell/cli.py",
             "    return f\"--{prefix}{key}={value}: {_deepest_reason(lines)}\"\n",
             "    return lines[0].strip()\n",
             ("tests/shell/test_cli_errors.py::test_a_wrong_type_is_one_error_line",)),
    Mutation("plot-without-pretraining", "the default plot leaves out Condition 2 per pre-training epoch",
             "lightning_dfc/shell/plotting.py",
             "        panels.append((PRETRAIN_PANEL, \"pretrain_epoch\", \"not logged\"))\n",
             "        pass\n",
             ("tests/shell/test_plotting.py::test_the_default_plot_shows_what_the_run_logged",)),
]


def run(mutation: Mutation) -> tuple[str, str]:
    """``caught``, ``SURVIVED`` or ``STALE`` (the code to change is not there exactly once), and
    the first error line of the failing test (what caught it)."""
    path = REPO / mutation.path
    original = path.read_text()
    if original.count(mutation.old) != 1:
        return "STALE", f"{mutation.old!r} occurs {original.count(mutation.old)} times in {mutation.path}"
    try:
        path.write_text(original.replace(mutation.old, mutation.new))
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                               "-o", "addopts=", *mutation.tests], cwd=REPO, capture_output=True, text=True)
    finally:
        path.write_text(original)
    errors = [line for line in proc.stdout.splitlines() if line.startswith("E ")]
    return ("caught" if proc.returncode != 0 else "SURVIVED"), (errors[0][1:].strip()[:150] if errors else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args(argv)
    known = {m.name: m for m in MUTATIONS}
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"unknown mutation(s) {', '.join(unknown)}; --list shows them")
    chosen = [known[n] for n in args.names] or MUTATIONS
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.what} ({m.path}) -> {', '.join(m.tests)}")
        return 0
    failures = 0
    for m in chosen:
        verdict, why = run(m)
        failures += verdict != "caught"
        print(f"{verdict:8s} {m.name}: {m.what}" + (f"\n         {why}" if why else ""), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""The engine: pure tensor functions and method objects, no Lightning import.

* :mod:`.dynamics`: the controlled network's simulation (wake and sleep).
* :mod:`.rules`: the local learning rules (forward and feedback updates) and losses.
* :mod:`.targets`: what the controller drives the output to (nudged, strong, hold).
* :mod:`.methods`: the learning methods (DFC, DFC-SS, DFC-SSA, DFA, BP, Strong-DFC) and their registry.
* :mod:`.control_loss`, :mod:`.diagnostics`: Strong-DFC's control loss and the theory's Conditions 1-3.
* :mod:`.config`, :mod:`.schedule`, :mod:`.network`, :mod:`.activations`: settings, the phase
  schedule, the wrapped network and its activations.
"""

"""The Lightning layer: the module and mixin that apply the core's updates (write grads, sync,
clip, step, log), callbacks, the CLI, data modules and plots."""

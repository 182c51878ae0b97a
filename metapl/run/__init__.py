"""A training run: the config (presets, sections, validation), building the parts from it, and the engine that
runs them (the loop, the run directory's rules, checkpoints, logs, budgets). Imports the core and the parts."""

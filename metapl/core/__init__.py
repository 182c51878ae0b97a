"""The core: what every part and the run build on, and nothing above it. One step's Batch, the errors, the
settings fields and registries, the losses, the optimiser and its settings, the EMA, data-parallel helpers, atomic
writes, checkpoint files and file fingerprints. Imports nothing of metapl outside core/."""

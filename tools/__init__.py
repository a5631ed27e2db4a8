"""Developer tools, not stages: ``python -m tools.overrides`` (configs as -S flags), ``python -m tools.plots_diff``."""

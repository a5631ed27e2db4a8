"""Stage logic of the CIFAR-10 pipeline: one module per DVC stage plus the helpers they share.

Each stage module exposes pure functions and a thin ``python -m tasks.<stage>`` entry point that
reads its own section of ``params.yaml`` (via :mod:`tasks.params`) and does the I/O.
"""

"""Stage logic of the CIFAR-10 pipeline: one module per DVC stage plus the helpers they share.

Each stage module exposes pure functions and a thin ``python -m tasks.<stage>`` entry point that
reads its own section of ``params.yaml`` (via :mod:`tasks.params`) and does the I/O.
"""

import os

# TensorFlow's C++ start-up chatter (oneDNN, CPU features) drowns the stage logs DVC and Prefect show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

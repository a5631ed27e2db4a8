"""Stage logic of the CIFAR-10 pipeline: one ``python -m tasks.<stage>`` entry point per DVC stage here at
the top (download, preprocess, validate, train_alexnet, train_vgg16, evaluate), and the code they share in
subpackages: :mod:`tasks.core` (params, paths, errors, atomic writes, devices), :mod:`tasks.data` (the
archive, the splits, their validation), :mod:`tasks.model` (layers, models, the training loop) and
:mod:`tasks.reporting` (scores, figures, the report, page templates).

Each entry point reads its own section of ``params.yaml`` (via :mod:`tasks.core.params`) and does the I/O.
"""

import os

# TensorFlow's C++ start-up chatter (oneDNN, CPU features) drowns the stage logs DVC and Prefect show;
# the lines it prints at import in spite of the variable are filtered (tasks.core.quiet).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tasks.core import quiet  # noqa: E402  (after the variable it reads)

quiet.install()

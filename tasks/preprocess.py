"""Stage ``preprocess``: archive -> stratified train/validation/test arrays plus a JSON of facts
in ``data/prepared/`` (how the splits are made: :mod:`tasks.data.splits`)."""

from __future__ import annotations

import logging

from tasks.core.cli import run_stage
from tasks.core.params import DataParams, load
from tasks.core.paths import ARCHIVE
from tasks.data.archive import read_archive
from tasks.data.splits import facts, make_splits, write_splits

log = logging.getLogger(__name__)


def main() -> None:
    params = load(DataParams)
    data = read_archive(ARCHIVE)
    splits = make_splits(data, params)
    write_splits(splits, facts(splits, data, params))
    log.info("prepared %s", {name: len(s.y) for name, s in splits.items()})


if __name__ == "__main__":
    run_stage(main)

"""Stage ``evaluate``: both trained models on the untouched test split -> metrics, plots, report.

The only stage that reads ``data/prepared/test.npz``. Writes ``metrics/evaluate.json``,
``plots/per_class/<model>.csv`` and ``plots/confusion/<model>.csv`` (:mod:`tasks.reporting.evaluation`)
and the report (:mod:`tasks.reporting.report`), all together (:func:`tasks.core.atomic.together`): a run
that fails half-way leaves the previous run's report, metrics and plots as they were.
"""

from __future__ import annotations

import json
import os

from tasks.core import devices, runinfo
from tasks.core.atomic import together, write_json, write_text
from tasks.core.cli import run_stage
from tasks.core.errors import StageError
from tasks.core.params import EvaluateParams, load
from tasks.core.paths import CONFUSION, EVALUATE_METRICS, MODELS, PER_CLASS, PREPARED, outputs_for
from tasks.data.splits import load_split


def main() -> None:
    params = load(EvaluateParams)
    try:
        test = load_split("test", PREPARED)
        class_names = json.loads((PREPARED / "facts.json").read_text())["class_names"]
    except (FileNotFoundError, KeyError) as exc:
        raise StageError(f"{PREPARED}: cannot read the test split ({exc}); run the preprocess stage first") from None
    for name in MODELS:
        out = outputs_for(name)
        if absent := [str(path) for path in (out.model, out.meta, out.metrics) if not path.is_file()]:
            raise StageError(f"{name}: {', '.join(absent)} not found; run the train_{name} stage first")
    # Keras loads only now, after the params and the input files passed their checks.
    from tasks.reporting import report
    from tasks.reporting.evaluation import confusion_csv, evaluate_model, metrics_entry, per_class_csv

    info = devices.describe()
    results = [evaluate_model(name, test, class_names, params) for name in MODELS]
    context = {
        "devices": info,
        "packages": runinfo.package_versions(),
        "evaluated": runinfo.now(),
        "params": {"evaluate": runinfo.as_dict(params)},
        # `dvc exp run` names the experiment it runs in DVC_EXP_NAME (`make quick`: quick-cpu); `dvc repro` does not.
        "experiment": os.environ.get("DVC_EXP_NAME"),
    }
    with together():
        for r in results:
            write_text(CONFUSION / f"{r.name}.csv", confusion_csv(test.y, r.probs, class_names))
            write_text(PER_CLASS / f"{r.name}.csv", per_class_csv(r.scores["per_class"]))
        report.write(results, test, class_names, params, context)
        write_json(EVALUATE_METRICS, {r.name: metrics_entry(r) for r in results})


if __name__ == "__main__":
    run_stage(main)

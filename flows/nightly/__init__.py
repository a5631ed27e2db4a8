"""The nightly run: the pipeline on a branch head, recorded as a DVC experiment (``python -m flows.nightly``)."""

"""``python -m flows.sweep``: run a sweep (:func:`flows.sweep.flow.main`)."""

import sys

from flows.sweep.flow import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m flows.nightly``: run the nightly flow once, here (:func:`flows.nightly.flow.main`)."""

import sys

from flows.nightly.flow import main

if __name__ == "__main__":
    sys.exit(main())

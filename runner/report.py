"""``python -m runner.report SWEEP_DIR``: the documented command for a sweep's summary
and plots. The report itself is part of the sweep layer: :mod:`runner.sweep.report`."""

import sys

from runner.sweep.report import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m runner.rerun JOB_DIR``: the documented command that runs one sweep point
(or run) again, alone, with exactly its config. It lives in the launch layer:
:mod:`runner.launch.rerun`."""

import sys

from runner.launch.rerun import main

if __name__ == "__main__":
    sys.exit(main())

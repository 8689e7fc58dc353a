"""`python -m jobs.prepare_data`: the data stage's earlier name, kept so that scripts written for it still
run. It is `python -m jobs.data` (see there), arguments and all."""

import sys

from jobs.data import main

if __name__ == "__main__":
    sys.exit(main())

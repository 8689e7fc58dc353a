"""`python -m jobs.train_tokenizer`: the tokenizer stage's earlier name, kept so that scripts written for it
still run. It is `python -m jobs.tokenizer` (see there), arguments and all."""

import sys

from jobs.tokenizer import main

if __name__ == "__main__":
    sys.exit(main())

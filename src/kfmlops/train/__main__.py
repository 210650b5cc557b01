"""One training rank: ``python -m kfmlops.train SPEC.json`` (or under ``torchrun ... -m kfmlops.train``)."""

import sys

from kfmlops.train.distributed import main

sys.exit(main())

"""One training rank: ``python -m kfmlops.train SPEC`` (or under ``torchrun ... -m kfmlops.train SPEC``);
SPEC is a :class:`~kfmlops.train.distributed.WorkerSpec` as JSON, or a JSON file's path."""

import sys

from kfmlops.train.distributed import main

sys.exit(main())

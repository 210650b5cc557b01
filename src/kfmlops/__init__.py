"""kfmlops: the ML lifecycle as reusable, tested Kubeflow Pipelines components.

One module per stage: :mod:`~kfmlops.ingest`, :mod:`~kfmlops.validate`, :mod:`~kfmlops.train`,
:mod:`~kfmlops.evaluate`, :mod:`~kfmlops.fairness`, :mod:`~kfmlops.register`; their KFP wrappers
are in :mod:`kfmlops.components` and the pipelines in :mod:`kfmlops.pipelines`.
"""

import os

__version__ = "0.1.0"
DEFAULT_IMAGE = f"ghcr.io/kfmlops/kfmlops:{__version__}"
IMAGE = os.environ.get("KFMLOPS_IMAGE") or DEFAULT_IMAGE
"""The image every component runs on: ``$KFMLOPS_IMAGE`` when set (read at import, so set it
before compiling: ``KFMLOPS_IMAGE=registry.example.com/ml/kfmlops:0.1.0 kfmlops compile``)."""

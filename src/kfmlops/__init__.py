"""kfmlops: the ML lifecycle as reusable, tested Kubeflow Pipelines components.

One module per stage: :mod:`~kfmlops.ingest`, :mod:`~kfmlops.validate`, :mod:`~kfmlops.train`,
:mod:`~kfmlops.evaluate`, :mod:`~kfmlops.fairness`, :mod:`~kfmlops.register`; their KFP wrappers
are in :mod:`kfmlops.components` and the pipelines in :mod:`kfmlops.pipelines`.
"""

__version__ = "0.1.0"
IMAGE = f"ghcr.io/kfmlops/kfmlops:{__version__}"

"""``kfmlops COMMAND [ARGS]``: each command lives beside the stage it runs and parses its own flags."""

from __future__ import annotations

import importlib
import logging
import sys

COMMANDS = {
    "run": ("kfmlops.local_run:main", "run the training pipeline locally through kfp.local and print a summary"),
    "tune": ("kfmlops.tune_cli:main", "search train settings on the validation split locally, or write a Katib Experiment"),
    "compile": ("kfmlops.compile:main", "compile every component and pipeline to YAML"),
    "submit": ("kfmlops.submit:main", "submit the compiled training pipeline to a Kubeflow Pipelines endpoint"),
    "models": ("kfmlops.registry:main", "list, show and compare registered model versions; roll the champion back; model cards"),
    "approve": ("kfmlops.approval:approve_main", "approve a version that waits for approval: champion, then deploy"),
    "reject": ("kfmlops.approval:reject_main", "reject a version that waits for approval"),
    "data": ("kfmlops.dataset_diff:main", "the data a version was trained on, and how two versions' data differ"),
    "audit": ("kfmlops.audit:main", "show and verify the signed audit log of promotions, rollbacks and deploys"),
    "serve": ("kfmlops.serving.server:main", "serve a registered model with KServe's ModelServer"),
    "sink": ("kfmlops.monitoring.sink:main", "receive KServe inference-log CloudEvents into Parquet"),
    "drift": ("kfmlops.monitoring.drift:main", "run the drift job and, when the policy fires, retraining"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
        usage = "usage: kfmlops COMMAND [ARGS]\n\ncommands:\n" + "\n".join(lines)
        if argv and argv[0] in ("-h", "--help"):
            print(usage)
            return 0
        unknown = f"kfmlops: unknown command {argv[0]!r}\n" if argv else ""
        print(unknown + usage, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module, func = COMMANDS[argv[0]][0].split(":")
    return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())

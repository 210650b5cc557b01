from typing import NamedTuple

from kfp.dsl import Dataset, Input

from kfmlops.components._base import component


@component
def tune(
    train_data: Input[Dataset],
    task: dict,
    settings: dict,
    run_id: str,
) -> NamedTuple("TuneOutputs", [("settings", dict)]):
    """Searches `tuning.space` over the train settings on the validation slice of the train split
    (Optuna TPE, pruning, `tuning.parallelism` worker processes); with `tuning.n_trials` 0, passes the
    settings through untouched.

    Args:
        train_data: Train split from ingest (canonical labels). The test split is not an input: the
            search never sees it.
        task: The label's task from ingest (kfmlops.tasks.Task as JSON).
        settings: kfmlops.config.Settings as JSON (the `tuning`, `train` and `mlflow` sections are read).
        run_id: The pipeline's MLflow run: the search is a child run of it (every trial a child run of
            the search), and it gets the search's lineage tags (kfmlops.tuning.*: space digest, budget,
            best trial and value), which register copies onto the model version.

    Returns:
        settings: The settings with the best trial's values in `train` (unchanged when no trial beat
            the configured settings, or when tuning is off), for train and release.
    """
    from kfmlops.step import step
    from kfmlops.tasks import Task
    from kfmlops.tracking import log_to_run
    from kfmlops.tune import tune as run_tune

    with step(settings, run_id, read=train_data.uri) as s:
        cfg = s.settings
        if not cfg.tuning.n_trials:
            return (settings,)
        result = run_tune(train_data.path, Task.from_json(task), cfg.train, cfg.tuning, mlflow=cfg.mlflow,
                          parent_run_id=run_id)
        log_to_run(cfg.mlflow, run_id, tags=result.tags())
        s.log(metrics={f"best_val_{result.metric}": result.best_value, "best_trial": result.best_trial},
              prefix="tune.")
        return (cfg.model_copy(update={"train": result.apply(cfg.train)}).to_parameter(),)

from typing import NamedTuple

from kfmlops.components._base import component


@component
def promote(model_name: str, version: str, settings: dict) -> NamedTuple("PromoteOutputs", [("previous_champion", str)]):
    """Moves the `champion` alias to a version that passed every gate.

    Args:
        model_name: The registered model (must match settings.mlflow.model_name).
        version: The version to promote.
        settings: kfmlops.config.Settings as JSON (the `mlflow`, `audit` and `provenance` sections are read: the
            move is appended to the model's signed audit log).

    Returns:
        previous_champion: The version that was champion before, or "none"; recorded on the new version for rollback.
    """
    from kfmlops.audit import Entry, Event, actor, log_event
    from kfmlops.register import promote as run_promote
    from kfmlops.step import step

    with step(settings) as s:
        if model_name != s.settings.mlflow.model_name:
            raise ValueError(f"model_name {model_name!r} differs from settings.mlflow.model_name "
                             f"{s.settings.mlflow.model_name!r}")
        previous = run_promote(s.settings.mlflow, version).previous_champion or "none"
        log_event(s.settings.audit, s.settings.provenance, Entry(
            event=Event.ALIAS_MOVED, model=model_name, version=str(version), actor=actor(),
            reason="passed the evaluation and fairness gates", details={"alias": "champion", "from": previous}))
        return (previous,)

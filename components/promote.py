from typing import NamedTuple

from kfmlops.components._base import component


@component
def promote(model_name: str, version: str, settings: dict) -> NamedTuple(
        "PromoteOutputs", [("previous_champion", str), ("status", str)]):
    """Moves the `champion` alias to a version that passed every gate, or, when
    settings.governance.require_approval is on, asks for a person's approval instead.

    Args:
        model_name: The registered model (must match settings.mlflow.model_name).
        version: The version that passed every gate.
        settings: kfmlops.config.Settings as JSON (the `mlflow`, `governance`, `audit` and `provenance` sections are
            read: the move, or the request, is appended to the model's signed audit log).

    Returns:
        previous_champion: The version that was champion before, or "none"; recorded on the new version for rollback.
        status: "promoted" (champion moved; deploy follows) or "pending" (the version waits for
            `kfmlops approve`; the champion and what is deployed stay as they are).
    """
    from kfmlops import approval
    from kfmlops.audit import Entry, Event, actor, log_event
    from kfmlops.register import current_champion, promote as run_promote
    from kfmlops import model_card
    from kfmlops.step import step

    with step(settings) as s:
        cfg = s.settings
        if model_name != cfg.mlflow.model_name:
            raise ValueError(f"model_name {model_name!r} differs from settings.mlflow.model_name {cfg.mlflow.model_name!r}")
        if cfg.governance.require_approval:
            champion = current_champion(cfg.mlflow)
            asked = approval.request(cfg.mlflow, cfg.governance, version, champion)
            log_event(cfg, Entry(
                event=Event.APPROVAL_REQUESTED, model=model_name, version=str(version), actor=actor(),
                reason="passed the evaluation and fairness gates; governance.require_approval is on",
                details={"started_by": asked.started_by, "expires_at": asked.expires_at, "champion": champion or "none"}))
            model_card.refresh(cfg, version)  # the card names the new state
            return (champion or "none", "pending")
        previous = run_promote(cfg.mlflow, version).previous_champion or "none"
        log_event(cfg, Entry(
            event=Event.ALIAS_MOVED, model=model_name, version=str(version), actor=actor(),
            reason="passed the evaluation and fairness gates", details={"alias": "champion", "from": previous}))
        model_card.refresh(cfg, version)  # the card names the new state
        return (previous, "promoted")

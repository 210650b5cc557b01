from kfp.dsl import Artifact, Dataset, Input, Output

from kfmlops.components._base import component


@component
def deploy(
    test_data: Input[Dataset],
    task: dict,
    version: str,
    promotion: str,
    settings: dict,
    rollout: Output[Artifact],
) -> str:
    """Validates a promoted version before push, rolls it out (canary, blue-green, shadow or A/B), then promotes it
    or rolls back; a version that waits for approval is left alone.

    Args:
        test_data: Test split from ingest: its rows probe the candidate predictor.
        task: The data's task (kfmlops.tasks.Task as JSON, from ingest): how served outputs are read back into
            scores, and the label column dropped from the probe rows.
        version: The registered model version to deploy (the new champion).
        promotion: promote's status: "promoted" deploys; "pending" (waits for `kfmlops approve`, which deploys it
            then) records nothing and returns "pending". A step input rather than a condition around the step:
            kfp.local cannot resolve a condition on a task output inside nested conditions.
        settings: kfmlops.config.Settings as JSON (the `deploy`, `mlflow`, `provenance`, `audit` sections are read, and
            `evaluate.decision_threshold` becomes the served binary label's threshold, `explain.serving_max_rows`
            the served :explain request's row limit).

    Returns:
        rollout: JSON account: status, validation and canary checks with their figures, steps, manifest.
        Output: "promoted", "rolled_back" (champion alias and traffic restored), "rejected" (failed validation) or
            "pending".
    """
    from kfmlops.audit import actor, log_event
    from kfmlops.serving.deploy import deploy as run_deploy, version_config
    from kfmlops import model_card
    from kfmlops.step import step
    from kfmlops.tasks import Task

    with step(settings, read=test_data.uri, write=rollout.uri) as s:
        cfg = s.settings
        if promotion != "promoted":
            s.write_json(rollout, {"status": "pending", "version": version}, status="pending", version=version)
            return "pending"
        result = run_deploy(test_data.path, Task.from_json(task), version_config(cfg, version), cfg.mlflow, cfg.provenance)
        s.write_json(rollout, result.to_json(), status=result.status, target=result.target, version=result.version)
        log_event(cfg, result.audit_entry(actor()))
        model_card.refresh(cfg, version)  # the card names the new state
        return result.status

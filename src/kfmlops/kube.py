"""The Kubernetes API client the cluster-side stages (deploy, training jobs) share."""


def _load_config() -> None:
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


def custom_objects_api():
    """A ``CustomObjectsApi`` from the in-cluster service account, else the local kubeconfig."""
    from kubernetes import client

    _load_config()
    return client.CustomObjectsApi()


def core_v1_api():
    """A ``CoreV1Api`` (Services, Pods) from the in-cluster service account, else the local kubeconfig."""
    from kubernetes import client

    _load_config()
    return client.CoreV1Api()

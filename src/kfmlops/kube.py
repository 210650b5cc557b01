"""The Kubernetes API client the cluster-side stages (deploy, training jobs) share."""


def custom_objects_api():
    """A ``CustomObjectsApi`` from the in-cluster service account, else the local kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()

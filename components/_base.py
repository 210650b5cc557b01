"""The decorator every kfmlops component uses: our image, kfmlops preinstalled, no pip at run time."""

from kfp import dsl

from kfmlops import IMAGE


def component(func):
    """A lightweight Python component on the kfmlops image (also runs under kfp.local's SubprocessRunner)."""
    return dsl.component(func, base_image=IMAGE, install_kfp_package=False)

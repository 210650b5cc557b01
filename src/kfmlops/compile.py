"""``kfmlops compile``: every component and pipeline to KFP YAML, beside its Python definition.

``--check`` compiles into memory and exits 1 when a committed YAML file is missing or stale.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def targets() -> dict[Path, object]:
    """Compiled YAML path -> component or pipeline."""
    from kfmlops import components, pipelines

    component_dir = Path(components.__file__).parent
    pipeline_dir = Path(pipelines.__file__).parent
    out = {component_dir / f"{name}.yaml": getattr(components, name) for name in components.__all__}
    out |= {pipeline_dir / f"{name}.yaml": getattr(pipelines, name) for name in pipelines.__all__}
    return out


def compile_to(obj, path: Path) -> None:
    from kfp import compiler

    compiler.Compiler().compile(obj, str(path))


def stale() -> list[Path]:
    """Committed YAML files that differ from a fresh compile."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for path, obj in targets().items():
            fresh = Path(tmp) / path.name
            compile_to(obj, fresh)
            if not path.is_file() or path.read_text() != fresh.read_text():
                out.append(path)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kfmlops compile", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if any committed YAML is stale")
    args = parser.parse_args(argv)
    if args.check:
        outdated = stale()
        for path in outdated:
            print(f"stale: {path} (run `make compile`)")
        return 1 if outdated else 0
    for path, obj in targets().items():
        compile_to(obj, path)
        print(f"wrote {path}")
    return 0

"""Where the local pipeline's time goes, task by task: start-up and imports against the work.

    .venv/bin/python benchmarks/pipeline_tasks.py [--runs 2] [--config pipelines/configs/adult.yaml]

For each task of a ``kfmlops run`` (through kfp.local, a throwaway KFMLOPS_HOME) it prints the
task's seconds (median over ``--runs``), and for its component the seconds a fresh interpreter
takes to start, import ``kfp.dsl.executor_main`` (what every task runs first) and then the
imports in the component's body (median of 3): what is left is the stage's own work, MLflow round
trips and the imports that stage functions make lazily (MLflow in ``kfmlops.tracking``) included. The second and later runs compare against a champion, as a repeated demo does.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def component_imports(name: str) -> str:
    """The import statements in the body of component ``name``, as code."""
    from kfmlops import components

    source = textwrap.dedent(inspect.getsource(getattr(components, name).python_func))
    body = ast.parse(source).body[0].body
    return "\n".join(ast.unparse(node) for node in body if isinstance(node, (ast.Import, ast.ImportFrom)))


def startup_seconds(code: str, repeat: int = 3) -> float:
    """Median wall seconds of a fresh interpreter running ``code``."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--config", default=str(ROOT / "pipelines" / "configs" / "adult.yaml"))
    args = parser.parse_args()
    os.environ["KFMLOPS_HOME"] = tempfile.mkdtemp(prefix="kfmlops-bench-")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from kfmlops.config import PipelineConfig
    from kfmlops.local_run import run_and_summarise

    config = PipelineConfig.from_yaml(args.config)
    runs = [run_and_summarise(config, progress=None, verbose=False) for _ in range(args.runs)]
    failed = [r["error"] for r in runs if r["status"] != "succeeded"]
    if failed:
        sys.exit(f"a run failed: {failed[0]}")
    bare = startup_seconds("import kfp.dsl.executor_main")
    print(f"{'task':<10} {'task s':>7} {'start+imports s':>16} {'work s':>7}   (median of {args.runs} runs)")
    print(f"{'(bare)':<10} {'':>7} {bare:>16.2f} {'':>7}   python -c 'import kfp.dsl.executor_main'")
    totals = [0.0, 0.0]
    for i, step in enumerate(runs[0]["steps"]):
        name = step["name"]
        seconds = statistics.median(r["steps"][i]["seconds"] for r in runs)
        imports = startup_seconds("import kfp.dsl.executor_main\n" + component_imports(name))
        totals[0] += seconds
        totals[1] += imports
        print(f"{name:<10} {seconds:>7.2f} {imports:>16.2f} {seconds - imports:>7.2f}")
    print(f"{'all tasks':<10} {totals[0]:>7.2f} {totals[1]:>16.2f} {totals[0] - totals[1]:>7.2f}")
    walls = [r["seconds"] for r in runs]
    print(f"pipeline wall seconds per run: {', '.join(f'{w:.1f}' for w in walls)}")


if __name__ == "__main__":
    main()

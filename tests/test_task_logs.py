"""kfp.local's output sorted into per-task logs, one progress line per step, and the failing step's reason."""

import io
import logging
import sys

from kfmlops.task_logs import TaskLogs, failure_reason

# What kfp.local 2.17 prints for a run whose second step fails (colours included).
KFP_OUTPUT = """\
17:32:25.633 - INFO - Running pipeline: \x1b[95m'kfmlops-training'\x1b[0m
17:32:25.671 - INFO - Executing task \x1b[96m'ingest'\x1b[0m
17:32:25.671 - INFO - Streamed logs:

    [KFP Executor 2026-12-02 17:32:26,001 INFO]: ingest: 32561 rows
17:32:34.739 - INFO - Task \x1b[96m'ingest'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m
17:32:34.740 - INFO - Task \x1b[96m'ingest'\x1b[0m outputs:
17:32:34.742 - INFO - Executing task \x1b[96m'validate'\x1b[0m
    Traceback (most recent call last):
      File "/work/main/src/kfmlops/validate.py", line 159, in raise_for_errors
    kfmlops.validate.DataValidationError: data validation failed: 1 error-level expectations
    - age expect_column_values_to_be_between: 10.0% unexpected

17:32:54.514 - ERROR - Task \x1b[96m'validate'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m
"""


def test_each_task_gets_its_log_and_one_progress_line(tmp_path):
    progress = io.StringIO()
    logs = TaskLogs(tmp_path / "logs", progress=progress)
    for chunk in (KFP_OUTPUT[:100], KFP_OUTPUT[100:333], KFP_OUTPUT[333:]):  # lines split across writes
        logs.write(chunk)
    logs.close()
    assert [(s.name, s.status) for s in logs.steps] == [("ingest", "SUCCESS"), ("validate", "FAILURE")]
    lines = progress.getvalue().splitlines()
    assert [line.split()[:2] for line in lines] == [["ingest", "SUCCESS"], ["validate", "FAILURE"]]
    ingest = (tmp_path / "logs" / "ingest.log").read_text()
    assert "ingest: 32561 rows" in ingest and "\x1b[" not in ingest and "Traceback" not in ingest
    assert "Running pipeline" in (tmp_path / "logs" / "pipeline.log").read_text()
    assert logs.failed().name == "validate"
    assert failure_reason(logs.failed().log) == (
        "DataValidationError: data validation failed: 1 error-level expectations; "
        "age expect_column_values_to_be_between: 10.0% unexpected")


def test_capture_takes_stdout_stderr_and_logging_then_gives_them_back(tmp_path):
    stdout, stderr, handlers = sys.stdout, sys.stderr, logging.getLogger().handlers[:]
    logs = TaskLogs(tmp_path, progress=None)
    with logs.capture():
        print("17:00:00.000 - INFO - Executing task 'train'")
        print("a warning", file=sys.stderr)
        logging.getLogger("kfp").warning("from a logger")
    assert (sys.stdout, sys.stderr, logging.getLogger().handlers) == (stdout, stderr, handlers)
    assert logs.closed
    text = (tmp_path / "train.log").read_text()
    assert "a warning" in text and "from a logger" in text


def test_a_task_that_ran_twice_keeps_both_logs(tmp_path):
    logs = TaskLogs(tmp_path, progress=None)
    logs.write("1 - INFO - Executing task 'evaluate'\nfirst\n1 - INFO - Task 'evaluate' finished with status SUCCESS\n"
               "1 - INFO - Executing task 'evaluate'\nsecond\n")
    logs.close()
    assert "first" in (tmp_path / "evaluate.log").read_text()
    assert "second" in (tmp_path / "evaluate-2.log").read_text()


def test_no_exception_in_the_log_gives_no_reason(tmp_path):
    (tmp_path / "x.log").write_text("all fine\n")
    assert failure_reason(tmp_path / "x.log") is None
    assert failure_reason(tmp_path / "missing.log") is None

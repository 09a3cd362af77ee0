"""The exit status of every rin_diffusion command line, and the exception that ends a run early.

Launchers act on these codes (launch/README.md, "Exit status"): a job that exits 0 is finished for
good and is never started again; one that exits PREEMPTED saved a durable checkpoint and resumes
when the same command runs again; BAD_INPUT and DIVERGED would fail the same way on a rerun, so
they are not retried; CRASH (Python's status for an uncaught exception) is retried a few times.
"""

from __future__ import annotations

COMPLETE = 0
CRASH = 1
BAD_INPUT = 2
DIVERGED = 3
# sysexits.h's EX_TEMPFAIL: "a temporary failure; the user is invited to retry".
PREEMPTED = 75

RETRYABLE = (CRASH, PREEMPTED)

MEANING = {
    COMPLETE: "complete: training reached total_steps and its final evaluation is recorded",
    CRASH: "crash: an unexpected error (traceback on stderr); the last checkpoint is intact",
    BAD_INPUT: "bad input: a flag, config value, file or checkpoint that cannot work; nothing "
               "in the workdir changed",
    DIVERGED: "diverged: a non-finite loss with config.nonfinite_loss='stop'; the last good "
              "checkpoint is intact",
    PREEMPTED: "preempted: SIGTERM (or Orbax's preemption notice) arrived; a durable checkpoint "
               "was saved; rerun the same command to resume",
}


class Preempted(Exception):  # noqa: N818 -- an event, not an error.
  """Raised by the trainer after it saved a durable checkpoint on a preemption notice."""

  def __init__(self, step: int, directory: str):
    super().__init__(f"preempted at step {step}: the checkpoint in {directory} is durable; rerun "
                     "the same command to resume.")
    self.step = step
    self.directory = directory


class Diverged(RuntimeError):
  """A non-finite loss stopped the run (config.nonfinite_loss='stop'); a rerun would repeat it."""


def of_exception(error: BaseException, bad_input: tuple[type, ...] = (ValueError,)) -> int:
  """The exit status for an exception that ended a command line."""
  if isinstance(error, Preempted):
    return PREEMPTED
  if isinstance(error, Diverged):
    return DIVERGED
  if isinstance(error, bad_input):
    return BAD_INPUT
  return CRASH

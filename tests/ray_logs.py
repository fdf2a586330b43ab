"""What a run printed, less the log lines of Ray Train's own processes that Ray calls harmless.

Under load on two cores, Ray Train 2.60's controller logs, with a traceback, that it could not send
its resource request to the AutoscalingCoordinator within 5 s ("safe to ignore"; the driver now
starts that actor first, see cluster.runtime.start_autoscaling_coordinator), or that its
PlacementGroupCleaner did not stop in time; the training has finished by then. Those lines carry the
prefix of the process that logged them. A run whose training failed exits non-zero and says so in
the driver's own lines, which are kept: tests check the exit status as well.
"""

RAY_TRAIN_PROCESSES = ("(TrainController pid=", "(PlacementGroupCleaner pid=")


def ours(out: str) -> str:
    """``out`` without the lines logged by Ray Train's controller and placement-group cleaner."""
    return "\n".join(line for line in out.splitlines()
                     if not any(p in line for p in RAY_TRAIN_PROCESSES))

"""Baselines the planner is measured against. They are judged by the same
:func:`ml_scheduler.problem.evaluate` as the exact planners."""

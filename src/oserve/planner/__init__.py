"""Planner: lower-level LP dispatch, upper-level deployment search, reference planners."""

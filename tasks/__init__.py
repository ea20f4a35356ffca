"""Pipeline phases: plain functions that do the work, a thin Prefect task at the bottom of each module."""

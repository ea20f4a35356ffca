"""Pipeline phases: plain functions that do the work, with a thin Prefect task at the bottom of each module."""

"""The flows (the DAG of DESIGN.md) and the `tinyllama` command line."""

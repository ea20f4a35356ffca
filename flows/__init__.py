"""The flows (the DAG of docs/architecture.md) and the `tinyllama` command line."""

"""Cleaning over documents: normalisation, quality filters, deduplication, splitting and the report.

`normalize`, `filters`, `dedup` and `split` are small pure pieces over text (text in, text or a verdict
out) with no I/O; `steps` wraps each as a step of the one shape in `pipeline`, which runs them in order
and records why every dropped document was dropped. `tasks.preprocess` chooses the steps from its config.
"""

"""Cleaning steps over document text: normalisation, quality filters, deduplication and the report.

Each module is a small pure piece (text in, text or a verdict out) with no I/O; `tasks.preprocess`
strings them together over the raw documents and records why every dropped document was dropped.
"""

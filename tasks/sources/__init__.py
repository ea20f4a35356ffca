"""Where raw documents come from: Wikipedia, web pages, local files and the built-in offline corpus.

Each source module holds its pydantic config section and plain functions that turn that config into
`Document`s; none of them knows about Prefect, fingerprints or the data root (that is `tasks.collect`).
"""

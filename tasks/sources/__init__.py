"""Where raw documents come from: Wikipedia, web pages, local files and the built-in offline corpus.

Each source module holds its pydantic config section and a source object of the one shape in
`tasks.sources.base` (`collect(context) -> (documents, summary)`); none of them knows about Prefect,
fingerprints or the data root (that is `tasks.collect`).
"""

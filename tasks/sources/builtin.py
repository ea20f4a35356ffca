"""The built-in offline corpus: documentation that ships inside Python's standard library.

Present on every machine with Python and no network, and nothing is copied into the repository:
the language-reference topics of `pydoc_data.topics` (~370 KB, the text behind `help("assert")`, less
the topics that are sections of others)
plus the docstrings of a fixed list of standard-library modules (module, classes, functions and
methods, ~0.5 MB), one document per topic or module: about 1 MB of English prose about Python,
enough for the quick-start model to learn something. The text depends on the Python version, and
so does the collect fingerprint (it hashes content).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import ClassVar

from tasks.sources.base import Failure, SourceContext, SourceSummary
from tasks.sources.document import Document, make_doc_id
from tasks.sources.sink import DocumentSink

SOURCE = "builtin"
NESTED_SHARE = 0.8  # a reference topic with this share of its lines inside a longer one is a section of it
TOPIC = "python documentation"
# Modules whose import has no side effects and whose docstrings are substantial prose.
MODULES = (
    "abc", "argparse", "array", "ast", "base64", "bisect", "calendar", "cmath", "collections",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "enum", "fnmatch",
    "fractions", "functools", "glob", "gzip", "hashlib", "heapq", "hmac", "html", "http.client",
    "inspect", "io", "ipaddress", "itertools", "json", "logging", "math", "mimetypes", "operator", "os",
    "pathlib", "pickle", "pprint", "queue", "random", "re", "sched", "secrets", "shlex", "shutil",
    "socket", "sqlite3", "statistics", "string", "struct", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "time", "timeit", "tokenize", "traceback", "typing", "unicodedata",
    "unittest", "urllib.parse", "uuid", "warnings", "weakref", "zipfile", "zlib",
    "codecs", "configparser", "doctest", "email.message", "ftplib", "gettext", "mailbox", "numbers",
    "optparse", "plistlib", "pstats", "smtplib",
)  # fmt: skip


@dataclass(frozen=True)
class BuiltinSummary(SourceSummary):
    documents: int
    failures: ClassVar[tuple[Failure, ...]] = ()  # nothing to fail item by item; not in summary.json


class BuiltinSource:
    """The offline corpus as a source: nothing to configure, nothing that can fail item by item."""

    name = SOURCE
    remote = False

    def collect(self, ctx: SourceContext, out: DocumentSink) -> BuiltinSummary:
        docs = builtin_documents()  # about 1 MB, whatever the size of the rest of the corpus
        for doc in docs:
            out.write(doc)
        return BuiltinSummary(documents=len(docs))


def builtin_documents() -> list[Document]:
    docs = [_topic_document(name, text) for name, text in _reference_topics().items()]
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # a trimmed Python build; the corpus is just smaller
            continue
        text = module_text(module)
        if text:
            docs.append(
                Document(
                    doc_id=make_doc_id(SOURCE, f"module:{name}"),
                    source=SOURCE,
                    title=f"The {name} module",
                    text=text,
                    url=f"https://docs.python.org/{sys.version_info[0]}.{sys.version_info[1]}/library/{name}.html",
                    topic=TOPIC,
                )
            )
    return docs


def _reference_topics() -> dict[str, str]:
    from pydoc_data.topics import topics

    return without_nested(dict(sorted(topics.items())))


def without_nested(topics: dict[str, str]) -> dict[str, str]:
    """The topics that no longer topic mostly repeats.

    pydoc's topics nest: "specialnames" holds "customization", "sequence-types" and others as its sections,
    "execmodel" holds "exceptions". Kept apart, the same text is two documents, which near-dedup does not
    catch (containment is not Jaccard similarity) and which the hash split can put on both sides: half of
    the demo's validation 32-grams were training text (docs/tuning-log.md). A topic at least
    `NESTED_SHARE` of whose lines a longer topic holds is left out (22 of 79 in 3.11).
    """
    lines = {
        name: {line.strip() for line in text.splitlines() if line.strip()} for name, text in topics.items()
    }

    def size(name: str) -> tuple[int, str]:  # ties broken by name, so one of two equal topics stays
        return len(lines[name]), name

    def nested(name: str) -> bool:
        own = lines[name]
        return any(
            size(other) > size(name) and len(own & lines[other]) >= NESTED_SHARE * len(own)
            for other in topics
            if other != name
        )

    return {name: text for name, text in topics.items() if not nested(name)}


def _topic_document(name: str, text: str) -> Document:
    return Document(
        doc_id=make_doc_id(SOURCE, f"topic:{name}"),
        source=SOURCE,
        title=text.strip().splitlines()[0].strip() if text.strip() else name,
        text=text.strip(),
        url=f"pydoc:{name}",
        topic=TOPIC,
    )


def module_text(module: ModuleType) -> str:
    """The module docstring, then each public class/function (and method) defined there with its docstring.

    Pure-Python modules are read from their source file with `ast`, not from the live module: other
    libraries in the process patch stdlib functions (something here replaces `inspect.getfile`) and live
    default values print their state, and either would make the corpus, and so every fingerprint,
    depend on what else was imported. Only extension modules (no source) are introspected.
    """
    source = getattr(module, "__file__", None)
    if source and source.endswith(".py"):
        return _source_text(Path(source))
    return _live_text(module)


def _source_text(path: Path) -> str:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parts = [ast.get_docstring(tree) or ""]
    for node in sorted(_public_defs(tree.body), key=lambda n: n.name):
        doc = ast.get_docstring(node)
        if doc:
            parts.append(f"{node.name}{_ast_signature(node)}\n\n{doc}")
        if isinstance(node, ast.ClassDef):
            for member in sorted(_public_defs(node.body), key=lambda n: n.name):
                member_doc = ast.get_docstring(member)
                if member_doc and not isinstance(member, ast.ClassDef):
                    parts.append(f"{node.name}.{member.name}{_ast_signature(member)}\n\n{member_doc}")
    return "\n\n".join(p.strip() for p in parts if p.strip())


def _public_defs(body: list[ast.stmt]) -> list[ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef]:
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return [n for n in body if isinstance(n, kinds) and not n.name.startswith("_")]


def _ast_signature(node: ast.AST) -> str:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return f"({ast.unparse(node.args)})"
    return ""


def _live_text(module: ModuleType) -> str:
    parts = [inspect.getdoc(module) or ""]
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if getattr(obj, "__module__", None) not in (module.__name__, None) and not inspect.isbuiltin(obj):
            continue  # re-exported from elsewhere
        doc = inspect.getdoc(obj)
        if doc:
            parts.append(f"{name}{_signature(obj)}\n\n{doc}")
        if inspect.isclass(obj):
            for attr, member in sorted(vars(obj).items()):
                if attr.startswith("_") or not inspect.isroutine(member):
                    continue
                member_doc = inspect.getdoc(member)
                if member_doc:
                    parts.append(f"{name}.{attr}{_signature(member)}\n\n{member_doc}")
    return "\n\n".join(p.strip() for p in parts if p.strip())


class _Elided:
    def __repr__(self) -> str:
        return "..."


def _signature(obj: object) -> str:
    """The signature, with defaults that are live objects shown as `...`.

    Such defaults print their memory address or current state (logging.shutdown's default is the live
    list of handlers), which would make the corpus, and so every fingerprint, differ from run to run.
    """
    try:
        sig = inspect.signature(obj)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""
    params = [
        p.replace(default=_Elided())
        if p.default is not p.empty and not isinstance(p.default, (int, float, str, bytes, bool, type(None)))
        else p
        for p in sig.parameters.values()
    ]
    return str(sig.replace(parameters=params))

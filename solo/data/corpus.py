"""The embedded default corpus: real English text on any machine with Python, no download.

Documents are the reference topics pydoc ships (`pydoc_data.topics`) and the module, class
and function docstrings of the standard library, read with `ast` from its source files
(nothing is imported, so no module runs). Instruction pairs for fine-tuning are derived from
the same docstrings. The same Python installation always gives the same corpus.
"""

from __future__ import annotations

import ast
import hashlib
import pydoc_data.topics
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Test suites, IDLE and bundled third-party code are not documentation.
_SKIP_PARTS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "__pycache__",
               "turtledemo", "ensurepip", "venv"}


@dataclass(frozen=True)
class Documented:
    qualname: str      # json.dumps
    kind: str          # module | class | function
    signature: str     # json.dumps(obj, *, skipkeys=False, ...)
    doc: str


def _stable_id(*parts: str) -> str:
    return hashlib.sha1("\x1f".join(parts).encode()).hexdigest()[:16]


def stdlib_sources() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py") if not _SKIP_PARTS.intersection(p.relative_to(root).parts)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _module_name(root: Path, file: Path) -> str:
    parts = list(file.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef, qualname: str) -> str:
    args = ast.unparse(node.args)
    return f"{qualname}({args})"


def documented_objects() -> Iterator[Documented]:
    """Every public module, class and function in the standard library that has a docstring."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for file in stdlib_sources():
        module = _module_name(root, file)
        if any(part.startswith("_") for part in module.split(".")):
            continue
        try:
            tree = ast.parse(file.read_bytes())
        except (SyntaxError, ValueError):
            continue
        doc = ast.get_docstring(tree)
        if doc:
            yield Documented(module, "module", module, doc)
        yield from _walk(tree.body, module)


def _walk(body: list[ast.stmt], prefix: str) -> Iterator[Documented]:
    for node in body:
        if not isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_"):
            continue
        qualname = f"{prefix}.{node.name}"
        doc = ast.get_docstring(node)
        if isinstance(node, ast.ClassDef):
            if doc:
                yield Documented(qualname, "class", qualname, doc)
            yield from _walk(node.body, qualname)
        elif doc:
            yield Documented(qualname, "function", _signature(node, qualname), doc)


def documents(max_documents: int | None = None) -> Iterator[dict]:
    """Records `{id, text}`: pydoc's topic pages, then one document per module's docstrings."""
    count = 0
    for name in sorted(pydoc_data.topics.topics):
        if max_documents is not None and count >= max_documents:
            return
        yield {"id": _stable_id("topic", name), "text": pydoc_data.topics.topics[name]}
        count += 1
    # One document per module keeps a module's docs together, as a web page would.
    current, chunks = None, []
    for obj in documented_objects():
        module = obj.qualname if obj.kind == "module" else None
        if module is not None or current is None:
            if current is not None and chunks:
                if max_documents is not None and count >= max_documents:
                    return
                yield {"id": _stable_id("module", current), "text": "\n\n".join(chunks)}
                count += 1
            current, chunks = obj.qualname if module else obj.qualname.rsplit(".", 1)[0], []
        header = obj.signature if obj.kind == "function" else f"{obj.kind} {obj.qualname}"
        chunks.append(f"{header}\n\n{obj.doc}")
    if current is not None and chunks and (max_documents is None or count < max_documents):
        yield {"id": _stable_id("module", current), "text": "\n\n".join(chunks)}


def _first_paragraph(doc: str) -> str:
    return doc.strip().split("\n\n", 1)[0].replace("\n", " ").strip()


def instruction_pairs(max_pairs: int | None = None) -> Iterator[dict]:
    """Conversations `{id, messages}` asking what a standard-library function or class does."""
    count = 0
    for obj in documented_objects():
        if obj.kind == "module":
            continue
        answer = _first_paragraph(obj.doc)
        if not 20 <= len(answer) <= 600:
            continue
        if max_pairs is not None and count >= max_pairs:
            return
        what = "function" if obj.kind == "function" else "class"
        messages = [
            {"role": "user", "content": f"What does the {what} {obj.qualname} do?"},
            {"role": "assistant", "content": answer},
        ]
        yield {"id": _stable_id("pair", obj.qualname), "messages": messages}
        count += 1

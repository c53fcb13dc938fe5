"""Read YAML that may be hostile: bounded in size, documents, nesting and alias expansion.

PyYAML's ``safe_load`` refuses arbitrary Python objects but nothing else: a file of
nested aliases (a "billion laughs") composes quickly into a small graph that expands
to billions of values as soon as anything walks it, an alias may refer to the mapping
that holds it (a cycle), a deeply nested document exhausts Python's recursion limit,
and a repeated key silently replaces the first. This module wraps PyYAML's pure
Python loader (its composer is the only place where depth can be counted as it grows)
and checks each document's node graph before anything is constructed from it:

- the stream is at most ``max_bytes`` long, holds at most ``max_documents`` and at
  most ``max_file_nodes`` values as written (parsing work is bounded by this);
- nesting is at most ``max_depth`` collections deep, counted while scanning (flow
  collections) and composing (all collections);
- counted as if every alias were copied out, a document has at most ``max_nodes``
  nodes and ``max_scalar_chars`` characters of scalars; an alias to a collection that
  encloses it is refused;
- a key repeated in one mapping is refused (merge keys ``<<`` still override).

Nothing here is a schema: the kinds' models check values. Errors carry the document
number (from 1) and, where known, the line.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from meshext.errors import MeshextError

MERGE_TAG = "tag:yaml.org,2002:merge"
_SYNTAX_ERRORS = (yaml.scanner.ScannerError, yaml.parser.ParserError, yaml.reader.ReaderError)


@dataclass(frozen=True)
class YamlLimits:
    """Bounds on one YAML stream (a file, or one object's text)."""

    max_bytes: int = 4 << 20
    """Kubernetes accepts requests of 3 MiB; a file may hold several objects."""
    max_documents: int = 1000
    max_depth: int = 100
    max_nodes: int = 200_000
    """Nodes of one document with every alias expanded."""
    max_scalar_chars: int = 16 << 20
    """Characters of scalars of one document with every alias expanded."""
    max_file_nodes: int = 250_000
    """Nodes parsed from one stream, aliases counted once each: bounds the parsing work
    of a file (about 5 s on a slow shared core) before any document is measured."""


DEFAULT_LIMITS = YamlLimits()


class UnsafeYamlError(MeshextError):
    """A YAML stream that is malformed or exceeds a bound; ``document`` counts from 1."""

    def __init__(self, message: str, document: int = 1, line: int | None = None) -> None:
        super().__init__(message if line is None else f"{message} (line {line})")
        self.message = message
        self.document = document
        self.line = line


def load_all(data: str | bytes, limits: YamlLimits = DEFAULT_LIMITS) -> Iterator[Any]:
    """The documents of ``data`` in order (``None`` for an empty one).

    Raises :class:`UnsafeYamlError` at the first document that is not valid YAML or
    exceeds ``limits``; the documents before it have been yielded.
    """
    size = len(data.encode() if isinstance(data, str) else data)
    if size > limits.max_bytes:
        raise UnsafeYamlError(f"{size} bytes is more than the limit of {limits.max_bytes} bytes")
    try:
        loader = _BoundedLoader(data, limits)
    except yaml.reader.ReaderError as exc:  # the reader checks a whole text at once
        raise UnsafeYamlError(_reader_problem(exc)) from exc
    index = 0
    try:
        while True:
            try:
                if not loader.check_node():
                    return
                index += 1
                if index > limits.max_documents:
                    raise UnsafeYamlError(
                        f"more than {limits.max_documents} documents in one file", index
                    )
                node = loader.get_node()
                if node is not None:
                    _check_expansion(node, limits, index)
                document = loader.construct_document(node) if node is not None else None
            except yaml.MarkedYAMLError as exc:
                mark = exc.problem_mark or exc.context_mark
                problem = exc.problem or exc.context or "invalid YAML"
                if exc.context and "duplicate anchor" in exc.context:
                    problem = exc.context.split(";")[0]
                if mark is None:
                    raise UnsafeYamlError(f"invalid YAML: {problem}", index or 1) from exc
                where = f"at line {mark.line + 1}, column {mark.column + 1}"
                kind = "syntax error" if isinstance(exc, _SYNTAX_ERRORS) else "error"
                raise UnsafeYamlError(f"YAML {kind} {where}: {problem}", index or 1) from exc
            except yaml.reader.ReaderError as exc:
                raise UnsafeYamlError(_reader_problem(exc), index or 1) from exc
            except yaml.YAMLError as exc:
                raise UnsafeYamlError(f"YAML error: {exc}", index or 1) from exc
            except _DepthExceeded as exc:
                raise UnsafeYamlError(
                    f"nested more than {limits.max_depth} levels deep", index, exc.line
                ) from None
            except (ValueError, OverflowError) as exc:
                # e.g. an integer of more digits than Python converts, a bad timestamp
                raise UnsafeYamlError(f"a value cannot be read: {exc}", index) from exc
            yield document
    finally:
        loader.dispose()


def load_one(data: str | bytes, limits: YamlLimits = DEFAULT_LIMITS) -> Any:
    """The single document of ``data`` (``None`` if empty); more than one is an error."""
    documents = list(load_all(data, limits))
    if len(documents) > 1:
        raise UnsafeYamlError("expected one document, found several", 2)
    return documents[0] if documents else None


def _reader_problem(exc: yaml.reader.ReaderError) -> str:
    return f"not YAML text: character {exc.character!r} at position {exc.position} is not allowed"


class _DepthExceeded(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


class _PythonEvents(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):
    def __init__(self, stream: str | bytes) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)


_EVENTS: Any = _PythonEvents
if yaml.__with_libyaml__:
    # libyaml scans and parses about five times faster than PyYAML's Python scanner
    # (and bounds flow nesting itself); composing stays in Python, where it is counted.
    _EVENTS = yaml.cyaml.CParser  # type: ignore[attr-defined]


class _BoundedLoader(
    yaml.composer.Composer,
    _EVENTS,  # type: ignore[misc]
    yaml.constructor.SafeConstructor,
    yaml.resolver.Resolver,
):
    def __init__(self, stream: str | bytes, limits: YamlLimits) -> None:
        _EVENTS.__init__(self, stream)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self._limits = limits
        self._depth = 0
        self._composed = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > self._limits.max_depth:
                raise _DepthExceeded(self.peek_event().start_mark.line + 1)
            self._composed += 1  # aliases included: bounds the work before expansion is measured
            if self._composed > self._limits.max_file_nodes:
                raise UnsafeYamlError(f"more than {self._limits.max_file_nodes} values in one file")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def fetch_flow_collection_start(self, token_class: Any) -> None:
        # The scanner keeps state per open flow collection and revisits it for every
        # token, so a long run of "[" costs quadratic time before the composer sees
        # any depth: count flow depth here too.
        if self.flow_level >= self._limits.max_depth:
            raise _DepthExceeded(self.get_mark().line + 1)
        super().fetch_flow_collection_start(token_class)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == MERGE_TAG:
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"found the key {key!r} twice; a key may appear only once",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_expansion(root: Node, limits: YamlLimits, document: int) -> None:
    """Refuse cycles, and documents too large once every alias is copied out.

    Each distinct node is measured once (aliases share nodes), so this is linear in the
    size of the text however large the expansion would be.
    """
    sizes: dict[int, tuple[int, int]] = {}
    open_nodes: set[int] = set()

    def measure(node: Node) -> tuple[int, int]:
        known = sizes.get(id(node))
        if known is not None:
            return known
        if id(node) in open_nodes:
            raise UnsafeYamlError(
                "an alias refers to a collection that contains it (a cycle)",
                document,
                node.start_mark.line + 1,
            )
        if isinstance(node, ScalarNode):
            result = (1, len(node.value))
        else:
            open_nodes.add(id(node))
            nodes, chars = 1, 0
            children: list[Node] = []
            if isinstance(node, SequenceNode):
                children = list(node.value)
            elif isinstance(node, MappingNode):
                children = [n for pair in node.value for n in pair]
            for child in children:
                n, c = measure(child)
                nodes, chars = nodes + n, chars + c
                if nodes > limits.max_nodes:
                    raise UnsafeYamlError(
                        f"more than {limits.max_nodes} values once aliases are expanded",
                        document,
                        node.start_mark.line + 1,
                    )
                if chars > limits.max_scalar_chars:
                    raise UnsafeYamlError(
                        f"more than {limits.max_scalar_chars} characters once aliases are expanded",
                        document,
                        node.start_mark.line + 1,
                    )
            open_nodes.discard(id(node))
            result = (nodes, chars)
        sizes[id(node)] = result
        return result

    measure(root)

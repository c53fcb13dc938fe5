"""A corpus of broken and hostile configuration, built by the tests themselves.

Each :class:`Case` is a set of files (YAML text, or special files: FIFOs, links,
sockets) and its expected outcome: every error substring in ``errors`` appears in an
error that names the case's folder, and exactly ``valid`` resources of the case are
accepted. A case with no expected error is a documented acceptance (for example, a
kind meshext does not own is ignored). Resource names are unique across cases, so all
cases can be served from one folder at once.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CASES_FOLDER = "cases"
GOOD_IMAGE = "127.0.0.1:9/team/filter:1.0"
"""Valid, and resolvable by nothing: port 9 on loopback is closed (serve runs allow it)."""


@dataclass(frozen=True)
class Fifo:
    pass


@dataclass(frozen=True)
class Link:
    target: str


@dataclass(frozen=True)
class Socket:
    pass


FileSpec = bytes | str | Fifo | Link | Socket


@dataclass(frozen=True)
class Case:
    name: str
    files: Mapping[str, FileSpec]
    errors: tuple[str, ...] = ()
    valid: int = 0
    kinds: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        return self.name


def sme(name: str, spec: Mapping[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    """A valid ServiceMeshExtension document; ``spec`` and ``top`` override parts."""
    document: dict[str, Any] = {
        "apiVersion": "maistra.io/v1",
        "kind": "ServiceMeshExtension",
        "metadata": {"name": name, "namespace": "bookinfo"},
        "spec": {"image": GOOD_IMAGE, "phase": "PostAuthZ", "priority": 1},
    }
    if spec is not None:
        document["spec"] = {**document["spec"], **spec}
    for key, value in top.items():
        if value is None:
            document.pop(key, None)
        elif key == "metadata":
            document["metadata"] = {**document["metadata"], **value}
        else:
            document[key] = value
    return document


def text(*documents: Mapping[str, Any]) -> str:
    return "\n---\n".join(json.dumps(d) for d in documents) + "\n"


def one(name: str, document: Mapping[str, Any], *errors: str, valid: int = 0) -> Case:
    return Case(name, {"ext.yaml": text(document)}, tuple(errors), valid)


def _billion_laughs(levels: int, width: int) -> str:
    lines = [f'l0: &l0 "{"lol" * 3}"']
    for level in range(1, levels + 1):
        refs = ", ".join([f"*l{level - 1}"] * width)
        lines.append(f"l{level}: &l{level} [{refs}]")
    return "\n".join(lines) + "\n"


def _spec_with_config(name: str, config_yaml: str) -> str:
    return (
        "apiVersion: maistra.io/v1\nkind: ServiceMeshExtension\n"
        f"metadata: {{name: {name}, namespace: bookinfo}}\n"
        f"spec:\n  image: {GOOD_IMAGE}\n  phase: PostAuthZ\n  config:\n{config_yaml}"
    )


def yaml_cases() -> list[Case]:
    """Text that is not YAML, or YAML that attacks the parser."""
    laughs = _billion_laughs(9, 10)
    nested = "a: " + "[" * 5000 + "]" * 5000 + "\n"
    nested_maps = "".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "v: 1\n"
    return [
        Case("billion-laughs", {"ext.yaml": laughs}, ("once aliases are expanded",)),
        Case(
            "billion-laughs-in-config",
            {
                "ext.yaml": _spec_with_config(
                    "laughs-config",
                    "".join(f"    {line}\n" for line in _billion_laughs(9, 10).splitlines()),
                )
            },
            ("once aliases are expanded",),
        ),
        Case(
            "billion-laughs-strings",
            {"ext.yaml": 'a: &a "' + "x" * 200_000 + '"\nb: [' + ", ".join(["*a"] * 100) + "]\n"},
            ("characters once aliases are expanded",),
        ),
        Case("recursive-alias", {"ext.yaml": "&c {self: *c}\n"}, ("cycle",)),
        Case("recursive-alias-list", {"ext.yaml": "&c [1, *c]\n"}, ("cycle",)),
        Case(
            "recursive-alias-in-spec",
            {"ext.yaml": _spec_with_config("recursive", "    &c {self: *c}\n")},
            ("cycle",),
        ),
        Case("nested-5000-lists", {"ext.yaml": nested}, ("nest",)),
        Case("nested-200-mappings", {"ext.yaml": nested_maps}, ("nested more than",)),
        Case("undefined-alias", {"ext.yaml": "a: *nothing\n"}, ("undefined alias",)),
        Case("duplicate-anchor", {"ext.yaml": "a: &x 1\nb: &x 2\nc: *x\n"}, ("YAML",), valid=0),
        Case(
            "duplicate-top-key",
            {"ext.yaml": "apiVersion: v1\nkind: ServiceMeshExtension\nkind: ConfigMap\n"},
            ("found the key 'kind' twice",),
        ),
        Case(
            "duplicate-spec-key",
            {
                "ext.yaml": "apiVersion: maistra.io/v1\nkind: ServiceMeshExtension\n"
                "metadata: {name: dup-spec, namespace: bookinfo}\n"
                f"spec:\n  image: {GOOD_IMAGE}\n  phase: PostAuthZ\n  priority: 1\n"
                "  priority: 2\n"
            },
            ("found the key 'priority' twice",),
        ),
        Case(
            "duplicate-metadata-name",
            {
                "ext.yaml": "apiVersion: maistra.io/v1\nkind: ServiceMeshExtension\n"
                "metadata:\n  name: first\n  name: second\n  namespace: bookinfo\n"
                f"spec: {{image: '{GOOD_IMAGE}', phase: PostAuthZ}}\n"
            },
            ("found the key 'name' twice",),
        ),
        Case(
            "merge-key-overrides",
            {
                "ext.yaml": "base: &base {image: '" + GOOD_IMAGE + "', phase: PostAuthZ}\n"
                "apiVersion: maistra.io/v1\nkind: ServiceMeshExtension\n"
                "metadata: {name: merged, namespace: bookinfo}\n"
                "spec:\n  <<: *base\n  phase: PreAuthZ\n"
            },
            ("base",),  # a top-level field meshext does not know
        ),
        Case("oversized-file", {"ext.yaml": "# " + "x" * (5 << 20) + "\n"}, ("limit of",)),
        Case(
            "too-many-documents",
            {"ext.yaml": "---\na: 1\n" * 1001},
            ("more than 1000 documents",),
        ),
        Case("invalid-utf8", {"ext.yaml": b"kind: \xff\xfe\x00bad\n"}, ("not UTF-8",)),
        Case("nul-bytes", {"ext.yaml": "kind: a\x00b\n"}, ("YAML",)),
        Case("tab-indentation", {"ext.yaml": "spec:\n\timage: x\n"}, ("YAML syntax error",)),
        Case(
            "python-object-tag",
            {"ext.yaml": "a: !!python/object/apply:os.system [id]\n"},
            ("constructor",),
        ),
        Case("unknown-local-tag", {"ext.yaml": "a: !evil 1\n"}, ("constructor",)),
        Case("huge-integer", {"ext.yaml": "a: " + "9" * 5000 + "\n"}, ("cannot be read",)),
        Case("bad-timestamp", {"ext.yaml": "a: 2024-13-45\n"}, ("cannot be read",)),
        Case("unclosed-flow", {"ext.yaml": "a: [1, 2\n"}, ("YAML syntax error",)),
        Case("unclosed-quote", {"ext.yaml": 'a: "open\n'}, ("YAML syntax error",)),
        Case("mapping-as-key", {"ext.yaml": "? {a: 1}\n: b\n"}, ("YAML",)),
        Case("list-as-key", {"ext.yaml": "? [a]\n: b\n"}, ("YAML",)),
        Case(
            "top-level-list",
            {"ext.yaml": "- kind: ServiceMeshExtension\n"},
            ("expected a mapping",),
        ),
        Case("top-level-scalar", {"ext.yaml": "just text\n"}, ("expected a mapping",)),
        Case("top-level-number", {"ext.yaml": "42\n"}, ("expected a mapping",)),
        Case("empty-file", {"ext.yaml": ""}),
        Case("only-comments", {"ext.yaml": "# nothing here\n"}),
        Case("only-separators", {"ext.yaml": "---\n---\n---\n"}),
        Case("unknown-kind-ignored", {"ext.yaml": text({"apiVersion": "v1", "kind": "ConfigMap"})}),
        Case("no-kind-ignored", {"ext.yaml": text({"apiVersion": "v1", "data": {}})}),
        Case(
            "good-then-broken-document",
            {"ext.yaml": text(sme("before-break")) + "---\na: [\n"},
            ("later documents in this file were not read",),
            valid=1,
        ),
        Case("bom-prefixed", {"ext.yaml": "\ufeff" + text(sme("with-bom"))}, valid=1),
        Case("crlf-lines", {"ext.yaml": text(sme("crlf")).replace("\n", "\r\n")}, valid=1),
        Case(
            "directive-yaml-1-1", {"ext.yaml": "%YAML 1.1\n---\n" + text(sme("directive"))}, valid=1
        ),
        Case("bad-directive", {"ext.yaml": "%YAML 9.9\n---\na: 1\n"}, ("YAML",)),
    ]


def manifest_cases() -> list[Case]:
    """Valid YAML that is not a valid resource."""
    huge = 2**31
    return [
        one(
            "wrong-api-version",
            sme("wrong-api", apiVersion="maistra.io/v9"),
            "unsupported apiVersion",
        ),
        one("missing-metadata", sme("no-meta", metadata=None) | {"metadata": None}, "metadata"),
        one("metadata-is-list", sme("meta-list") | {"metadata": ["a"]}, "metadata"),
        one("missing-name", {**sme("x"), "metadata": {"namespace": "bookinfo"}}, "metadata.name"),
        one("uppercase-name", sme("x", metadata={"name": "Upper"}), "not a valid name"),
        one("name-too-long", sme("x", metadata={"name": "a" * 254}), "not a valid name"),
        one("empty-name", sme("x", metadata={"name": ""}), "not a valid name"),
        one("name-with-slash", sme("x", metadata={"name": "a/b"}), "not a valid name"),
        one("name-is-number", sme("x", metadata={"name": 12}), "metadata.name"),
        one("bad-namespace", sme("bad-ns", metadata={"namespace": "Book_Info"}), "namespace"),
        one("namespace-too-long", sme("long-ns", metadata={"namespace": "n" * 64}), "namespace"),
        one("label-key-bad", sme("label-key", metadata={"labels": {"-bad": "x"}}), "label key"),
        one("label-key-long", sme("label-long", metadata={"labels": {"k" * 64: "x"}}), "label key"),
        one(
            "label-prefix-bad",
            sme("label-prefix", metadata={"labels": {"Bad_Prefix/k": "x"}}),
            "label key",
        ),
        one(
            "label-value-bad", sme("label-value", metadata={"labels": {"a": "x y"}}), "label value"
        ),
        one(
            "label-value-long",
            sme("label-vlong", metadata={"labels": {"a": "v" * 64}}),
            "label value",
        ),
        one("label-value-number", sme("label-num", metadata={"labels": {"a": 1}}), "labels"),
        one("generation-negative", sme("gen-neg", metadata={"generation": -1}), "generation"),
        one("generation-string", sme("gen-str", metadata={"generation": "two"}), "generation"),
        one("priority-above-int32", sme("prio-high", {"priority": huge}), "32-bit range"),
        one("priority-below-int32", sme("prio-low", {"priority": -huge - 1}), "32-bit range"),
        one("priority-float", sme("prio-float", {"priority": 1.5}), "priority must be an integer"),
        one(
            "priority-string", sme("prio-str", {"priority": "high"}), "priority must be an integer"
        ),
        one("priority-bool", sme("prio-bool", {"priority": True}), "priority must be an integer"),
        one("priority-int32-max-ok", sme("prio-max", {"priority": huge - 1}), valid=1),
        one("priority-int32-min-ok", sme("prio-min", {"priority": -huge}), valid=1),
        one("phase-unknown", sme("phase-unknown", {"phase": "Early"}), "unknown phase"),
        one("phase-number", sme("phase-num", {"phase": 3}), "spec.phase"),
        one("image-empty", sme("img-empty", {"image": ""}), "spec.image"),
        one(
            "image-no-tag", sme("img-notag", {"image": "quay.io/team/filter"}), "neither a tag nor"
        ),
        one("image-port-99999", sme("img-port", {"image": "127.0.0.1:99999/x:1"}), "invalid port"),
        one("image-port-0", sme("img-port0", {"image": "127.0.0.1:0/x:1"}), "invalid port"),
        one("image-whitespace", sme("img-space", {"image": " quay.io/a/b:1"}), "white space"),
        one(
            "image-bad-digest",
            sme("img-digest", {"image": "quay.io/a/b@sha256:xyz"}),
            "invalid digest",
        ),
        one("image-bad-tag", sme("img-tag", {"image": "quay.io/a/b:-bad"}), "invalid tag"),
        one(
            "image-uppercase-repo",
            sme("img-upper", {"image": "quay.io/A/B:1"}),
            "invalid repository",
        ),
        one(
            "image-bad-host",
            sme("img-host", {"image": "qu_ay.io:5000/a:1"}),
            "invalid registry host",
        ),
        one("image-is-list", sme("img-list", {"image": ["a"]}), "spec.image"),
        one("image-file-no-path", sme("img-file", {"image": "file:"}), "names no path"),
        one("config-v1-string", sme("cfg-str", {"config": "text"}), "config is an object"),
        one("config-v1-list", sme("cfg-list", {"config": [1, 2]}), "config is an object"),
        one(
            "config-v1alpha1-object",
            sme("cfg-alpha", {"config": {"a": 1}}, apiVersion="maistra.io/v1alpha1"),
            "config is a string",
        ),
        one(
            "pull-policy-unknown",
            sme("pull-bad", {"imagePullPolicy": "Sometimes"}),
            "imagePullPolicy",
        ),
        one(
            "pull-secrets-string",
            sme("secrets-str", {"imagePullSecrets": "regcred"}),
            "imagePullSecrets",
        ),
        one(
            "pull-secrets-no-name",
            sme("secrets-noname", {"imagePullSecrets": [{}]}),
            "imagePullSecrets",
        ),
        one(
            "selector-label-key-bad",
            sme("sel-key", {"workloadSelector": {"labels": {"a b": "x"}}}),
            "label key",
        ),
        one(
            "selector-label-value-bad",
            sme("sel-value", {"workloadSelector": {"labels": {"app": "-x-"}}}),
            "label value",
        ),
        one(
            "selector-is-string", sme("sel-str", {"workloadSelector": "app=x"}), "workloadSelector"
        ),
        one(
            "unknown-spec-field", sme("spec-extra", {"imagePullPolicyy": "Always"}), "unknown field"
        ),
        one("spec-missing", sme("spec-missing", spec=None) | {"spec": None}, "spec"),
        one("spec-is-list", sme("spec-list") | {"spec": []}, "spec"),
        one(
            "spec-image-missing", {**sme("no-image"), "spec": {"phase": "PostAuthZ"}}, "spec.image"
        ),
        one(
            "status-is-ignored", sme("with-status", status={"deployment": {"ready": True}}), valid=1
        ),
        Case(
            "duplicate-resource-two-files",
            {"a.yaml": text(sme("twice")), "b.yaml": text(sme("twice"))},
            ("duplicate",),
            valid=1,
        ),
        Case(
            "member-roll-wrong-name",
            {
                "roll.yaml": text(
                    {
                        "apiVersion": "maistra.io/v1",
                        "kind": "ServiceMeshMemberRoll",
                        "metadata": {"name": "not-default", "namespace": "hostile-cp"},
                        "spec": {"members": ["x"]},
                    }
                )
            },
            ("must be named 'default'",),
        ),
        one(
            "wasmplugin-no-spec",
            {
                "apiVersion": "extensions.istio.io/v1alpha1",
                "kind": "WasmPlugin",
                "metadata": {"name": "wp-nospec", "namespace": "bookinfo"},
            },
            "spec",
        ),
        one(
            "kind-is-number",
            {"apiVersion": "maistra.io/v1", "kind": 5, "metadata": {"name": "k5"}},
        ),
        one("good-extension", sme("good-one"), valid=1),
    ]


def file_type_cases() -> list[Case]:
    """Entries named like manifests that are not regular files."""
    return [
        Case("fifo", {"pipe.yaml": Fifo()}, ("a FIFO",)),
        Case("symlink-loop", {"loop.yaml": Link("loop.yaml")}, ("loops",)),
        Case("symlink-loop-pair", {"a.yaml": Link("b.yaml"), "b.yaml": Link("a.yaml")}, ("loops",)),
        Case("dangling-symlink", {"gone.yaml": Link("does-not-exist.yaml")}, ("does not exist",)),
        Case("symlink-to-dev-zero", {"zero.yaml": Link("/dev/zero")}, ("character device",)),
        Case("symlink-to-dev-null", {"null.yaml": Link("/dev/null")}, ("character device",)),
        Case("symlink-to-folder", {"folder.yaml": Link("/tmp")}, ("a folder",)),
        Case("socket", {"sock.yaml": Socket()}, ("a socket",)),
        Case(
            "symlink-to-regular-file",
            {"real.txt": text(sme("via-link")), "link.yaml": Link("real.txt")},
            valid=1,
        ),
        Case("hidden-file-ignored", {".hidden.yaml": "a: [\n"}),
        Case("other-suffix-ignored", {"notes.txt": "a: [\n", "ext.json": "{"}),
    ]


def all_config_cases() -> list[Case]:
    cases = yaml_cases() + manifest_cases() + file_type_cases()
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


def build_case(case: Case, folder: Path) -> None:
    """Create the files of ``case`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, spec in case.files.items():
        path = folder / name
        if isinstance(spec, Fifo):
            os.mkfifo(path)
        elif isinstance(spec, Link):
            path.symlink_to(spec.target)
        elif isinstance(spec, Socket):
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(str(path))
            server.close()
        elif isinstance(spec, bytes):
            path.write_bytes(spec)
        else:
            path.write_text(spec, encoding="utf-8")

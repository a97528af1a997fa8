"""A griffe extension for the API reference: aether's reST-ish docstrings read as Markdown.

The docstrings are Markdown-compatible except for two Sphinx habits, which this extension
(registered for mkdocstrings in ``mkdocs.yml``) rewrites once the package is loaded:

- roles (``:class:`~aether.testing.NatsServer```, ``:meth:`open```, ``:mod:`aether.store```)
  become a cross-reference to the named object, resolved the way Python resolves the name
  in the docstring's scope. The reference is optional: it links when the API reference
  shows the object and is plain inline code otherwise (a private helper, nats-py), so
  naming something that is not documented never breaks ``mkdocs build --strict``;
- a ``#:`` comment right above a constant or a field becomes its docstring, and a
  paragraph ending in ``::`` loses one colon (the indented block after it is Markdown
  code already);
- a pytest fixture gets a label with its scope, shown next to its name.
"""

from __future__ import annotations

import functools
import html
import re
from typing import Any

import griffe

_ROLE = re.compile(
    r":(?:py:)?(?:class|meth|func|attr|data|mod|exc|obj):`(?P<bang>!?)(?P<tilde>~?)"
    r"(?P<target>[^`<]+?)(?:\s*<(?P<explicit>[^>`]+)>)?`"
)


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles and ``#:`` comments of every object of the loaded package."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _walk(pkg):
            if obj.is_function:
                _label_fixture(obj)  # type: ignore[arg-type]
            if obj.docstring is None and obj.is_attribute:
                _comment_docstring(obj)
            if obj.docstring is not None:
                text = re.sub(r"(\S)::$", r"\1:", obj.docstring.value, flags=re.MULTILINE)
                obj.docstring.value = _ROLE.sub(functools.partial(_reference, obj), text)


def _walk(obj: griffe.Object) -> list[griffe.Object]:
    """*obj* and the objects defined in it (not the names it imports)."""
    found = [obj]
    for member in obj.members.values():
        if not member.is_alias:
            found += _walk(member)  # type: ignore[arg-type]
    return found


def _reference(obj: griffe.Object, match: re.Match[str]) -> str:
    target = match["target"].strip()
    if match["explicit"]:  # :role:`text <target>`
        title, target = target, match["explicit"].strip()
    else:
        title = target.rsplit(".", 1)[-1] if match["tilde"] else target
    code = f"<code>{html.escape(title)}</code>"
    path = None if match["bang"] else _resolve(obj, target)
    if path is None:
        return code
    return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'


def _resolve(obj: griffe.Object, target: str) -> str | None:
    """The path of the object *target* names in *obj*'s scope, if the package has it."""
    head, _, rest = target.partition(".")
    if head == obj.package.name:
        path = target
    else:
        try:
            path = obj.resolve(head)
        except griffe.NameResolutionError:
            return None
        path = f"{path}.{rest}" if rest else path
    try:
        found = obj.modules_collection[path]
        return str(found.path)
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _comment_docstring(attr: griffe.Object) -> None:
    """Give *attr* the ``#:`` comment lines right above it as docstring."""
    if attr.lineno is None or attr.filepath is None or isinstance(attr.filepath, list):
        return
    try:
        lines = attr.lines_collection[attr.filepath]
    except KeyError:
        return
    comment: list[str] = []
    n = attr.lineno - 2  # 0-based index of the line above
    while n >= 0 and lines[n].strip().startswith("#:"):
        comment.insert(0, lines[n].strip()[2:].strip())
        n -= 1
    if comment:
        attr.docstring = griffe.Docstring(" ".join(comment), lineno=n + 2, parent=attr)


def _label_fixture(func: griffe.Function) -> None:
    for decorator in func.decorators:
        text = str(decorator.value)
        if re.match(r"(pytest\.)?fixture\b", text):
            scope = re.search(r"scope=['\"](\w+)['\"]", text)
            func.labels.add(f"pytest fixture, {scope[1] if scope else 'function'} scope")

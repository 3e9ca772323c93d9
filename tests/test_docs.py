"""The documentation names only what exists: README's paths and links, and the
configuration page against the settings classes (pure: reads files, starts nothing)."""

from __future__ import annotations

import inspect
import re

from atcdn.core import settings
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from tests.helpers.env import ROOT

DOCS = ROOT / "docs"


def setting_variables() -> set[str]:
    """The ``ATCDN_*`` variable of every field of every settings class."""
    names = set()
    for _, cls in inspect.getmembers(settings, inspect.isclass):
        if not issubclass(cls, BaseSettings) or cls.__module__ != settings.__name__:
            continue
        prefix = cls.model_config.get("env_prefix", "")
        for name, field in cls.model_fields.items():
            alias = field.validation_alias
            if isinstance(alias, AliasChoices):
                names.add(next(c for c in alias.choices if str(c).startswith("ATCDN_")))
            else:
                names.add(f"{prefix}{name}".upper())
    return names


def variables_in(text: str) -> set[str]:
    # "ATCDN_EDGE_*" names a group, not a variable.
    return {name for name in re.findall(r"ATCDN_[A-Z0-9_]+", text) if not name.endswith("_")}


def test_configuration_lists_every_setting_and_nothing_else() -> None:
    documented = variables_in((DOCS / "configuration.md").read_text())
    assert documented - setting_variables() == set()  # no variable that does not exist
    everywhere = set().union(*(variables_in(page.read_text()) for page in DOCS.glob("*.md")))
    assert setting_variables() - everywhere == set()  # every setting documented somewhere


def test_readme_layout_names_existing_paths() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    paths = {p for row in table.splitlines() if row.startswith("| `") or row.startswith("| **`")
             for p in re.findall(r"`([\w./-]+)`", row.split("|")[1])}
    assert len(paths) > 40
    assert sorted(p for p in paths if not (ROOT / p).exists()) == []


def test_links_point_at_files() -> None:
    for page in [ROOT / "README.md", *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name} links to {target}"


def test_readme_layout_names_every_module() -> None:
    """A newcomer finds every module of every layer in the README's table."""
    readme = (ROOT / "README.md").read_text()
    modules = [path.relative_to(ROOT) for layer in ("core", "origin", "edge", "control", "cli",
                                                    "ingest")
               for path in sorted((ROOT / layer).glob("*.py"))
               if path.name not in ("__init__.py", "__main__.py")]
    assert [str(m) for m in modules if f"`{m}`" not in readme] == []

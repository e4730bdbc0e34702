"""The docs stay true to the code: every file a page names exists, the architecture map names every module
of the apps, the README fits a screen, and no file of the project points outside the repository."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
APPS = ("chatsite", "conversations", "modelhub")
# A path of the project written in backticks: `conversations/chat/replies.py`, `tests/live.py`, `docs/`…
PATH = re.compile(r"`((?:chatsite|conversations|modelhub|tests|bench|templates|static|docs)/[\w./-]*)`")


def pages():
    return sorted(DOCS.rglob("*.md")) + [ROOT / "README.md"]


def modules():
    return sorted(
        path.relative_to(ROOT).as_posix()
        for app in APPS
        for path in (ROOT / app).rglob("*.py")
        if path.name != "__init__.py" and "migrations" not in path.parts
    )


@pytest.mark.parametrize("page", pages(), ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_path_a_page_names_exists(page):
    named = set(PATH.findall(page.read_text(encoding="utf-8")))
    missing = sorted(name for name in named if not (ROOT / name.split("::")[0]).exists())
    assert missing == [], f"{page.relative_to(ROOT)} names files that do not exist"


def test_the_architecture_map_names_every_module_of_the_apps():
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    assert [module for module in modules() if f"`{module}`" not in text] == []


def test_the_readme_fits_a_screen_and_links_into_the_docs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    linked = set(re.findall(r"\]\((docs/[\w./-]+\.md)\)", readme))
    assert linked and all((ROOT / link).is_file() for link in linked)


def test_no_file_of_the_project_names_a_path_outside_the_repository():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    outside = re.compile(r"\.\./shared|(?<![\w/])(?:STYLE|ARCHITECTURE)\.md")
    offending = [
        name
        for name in files
        if (ROOT / name).is_file()
        and name != Path(__file__).relative_to(ROOT).as_posix()
        and outside.search((ROOT / name).read_text(encoding="utf-8", errors="ignore"))
    ]
    assert offending == []

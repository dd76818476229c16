"""The README and docs/: a short README whose links land inside the repository, and no page that
points out of it. The docs' own links and anchors are checked by their strict MkDocs build
(`make docs`, run by .ci/run); these checks need no MkDocs."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """The ids MkDocs gives a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    ids = set()
    for line in page.read_text().splitlines():
        if line.startswith("#") and not line.startswith("#!"):
            title = line.lstrip("#").strip().lower()
            ids.add(re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", title)).strip("-"))
    return ids


def test_the_readme_is_short_and_its_links_land_in_the_repository():
    readme = REPO / "README.md"
    assert len(readme.read_text().splitlines()) <= 150
    links = LINK.findall(readme.read_text())
    assert len(links) >= 10
    for link in links:
        path, _, anchor = link.partition("#")
        target = (REPO / path).resolve()
        assert target.is_relative_to(REPO) and target.is_file(), link
        if anchor:
            assert anchor in anchors(target), link


def test_no_page_points_out_of_the_repository():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    assert len(pages) > 5
    for page in pages:
        text = page.read_text()
        assert "../" not in text, page.name
        for link in LINK.findall(text):
            assert not link.startswith(("/", "file:")), (page.name, link)


def test_the_docs_are_built_from_every_page():
    nav = (REPO / "mkdocs.yml").read_text()
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f": {page.name}" in nav, f"add docs/{page.name} to the nav in mkdocs.yml"

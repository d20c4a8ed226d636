"""The README stays a manual and the docs stay true to the repository: short enough to
read, links that resolve, nothing about how the work was organised."""

from __future__ import annotations

import re

import pytest

from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_the_readme_is_a_manual_of_at_most_250_lines_that_starts_with_the_two_commands():
  lines = (REPO / "README.md").read_text().splitlines()
  assert len(lines) <= 250, len(lines)
  first_block = "\n".join(lines[:lines.index("```", lines.index("```bash") + 1)])
  assert "launch/setup.sh --with-fashion-mnist && .venv/bin/jackpot search" in first_block
  ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
  assert ci in first_block  # .ci/run runs exactly the README's test command


@pytest.mark.parametrize("page", DOCS, ids=lambda page: page.name)
def test_every_relative_link_of_a_page_names_a_file_in_the_repository(page):
  for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
    if "://" not in target:
      assert (page.parent / target).exists(), f"{page.name} links to {target}"


@pytest.mark.parametrize("page", DOCS, ids=lambda page: page.name)
def test_user_facing_text_names_no_issue_commit_or_file_outside_the_repository(page):
  text = page.read_text()
  assert not re.search(r"\bissues? #?\d+", text, re.IGNORECASE), page.name
  assert not re.search(r"\bcommit [0-9a-f]{7,40}\b", text), page.name
  assert "../shared" not in text and "ALGORITHM.md" not in text, page.name

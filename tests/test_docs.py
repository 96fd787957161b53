"""The README and docs/: every relative link and #anchor resolves; the README stays short."""

import glob
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md", "bench/README.md",
         *sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))]


def _anchors(path: str) -> set[str]:
  """GitHub's heading anchors of a markdown file (lower case, punctuation dropped, - for spaces)."""
  out, in_code = set(), False
  for line in open(path, encoding="utf-8"):
    if line.startswith("```"):
      in_code = not in_code
    match = None if in_code else re.match(r"#+ (.*)", line)
    if match:
      out.add(re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-"))
  return out


def _links(page: str) -> list[str]:
  text = re.sub(r"```.*?```", "", open(os.path.join(REPO, page), encoding="utf-8").read(),
                flags=re.S)
  return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+://", t)]


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_and_anchor_resolves(page):
  bad = []
  for target in _links(page):
    path, _, fragment = target.partition("#")
    full = os.path.normpath(os.path.join(REPO, os.path.dirname(page), path) if path
                            else os.path.join(REPO, page))
    if not os.path.exists(full):
      bad.append(f"{target}: no such file")
    elif fragment and full.endswith(".md") and fragment not in _anchors(full):
      bad.append(f"{target}: no heading #{fragment}")
  assert not bad, f"{page}: {bad}"


def test_the_docs_pages_exist_and_start_with_a_command():
  pages = [p for p in PAGES if p.startswith("docs")]
  assert {os.path.basename(p) for p in pages} >= {
      "data.md", "training.md", "sampling.md", "evaluation.md", "classifier.md",
      "performance.md", "reliability.md", "conversion.md"}
  for page in pages:
    text = open(os.path.join(REPO, page), encoding="utf-8").read()
    first_block = text.split("\n## ")[0]
    assert "```" in first_block or "\n    python" in first_block, f"{page} starts with no command"


def test_readme_is_short_and_keeps_its_two_setup_commands():
  text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
  assert len(text.splitlines()) <= 170
  assert ("python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt && "
          "python -m solar_ddpm_jax.main --config=configs/aia171.py:demo --workdir=workdir/demo"
          in text)
  assert "\npython -m pytest -q\n" in text

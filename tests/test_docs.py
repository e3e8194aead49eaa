"""The README fits a few screens, every page links only to files that exist, and the
project's code and configs describe what is, not the history of how it got there."""
import re
import subprocess

from conftest import ROOT

PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")), "config/README.md"]


def test_the_readme_fits_a_few_screens():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move detail to docs/"


def test_every_relative_link_points_at_a_file():
    for page in PAGES:
        text = (ROOT / page).read_text()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            assert (ROOT / page).parent.joinpath(target).exists(), f"{page} links to {target}, which does not exist"


def test_no_code_or_config_narrates_issues():
    """History belongs in commit messages: no 'issue #N' or issue-named helpers in the tree."""
    paths = ["sglora", "workflow", "config", "config.yaml", "Snakefile", "Makefile", "tests", "benchmarks", "docs", "README.md"]
    out = subprocess.run(["git", "grep", "-n", "-i", "-E", r"issue ?#?[0-9]+|issue[0-9]", "--", *paths,
                          ":!tests/test_docs.py"], cwd=ROOT, capture_output=True, text=True).stdout
    assert out == "", out

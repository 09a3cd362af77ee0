"""One version: rin_diffusion.__version__, which setup.py reads and CITATION.cff and CHANGELOG.md name."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import yaml

import rin_diffusion

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_setup_reads_the_package_version():
  result = subprocess.run([sys.executable, "setup.py", "--version"], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == rin_diffusion.__version__


def test_citation_names_the_version_and_the_papers():
  citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
  assert citation["cff-version"] == "1.2.0" and citation["type"] == "software"
  assert citation["version"] == rin_diffusion.__version__
  years = {ref["authors"][0]["family-names"]: ref["year"] for ref in citation["references"]}
  assert years == {"Jabri": 2023, "Chen": 2023, "Ho": 2022, "Hang": 2023}


def test_changelog_has_the_version_and_unreleased_above_it():
  headings = re.findall(r"^## (.+)$", (REPO / "CHANGELOG.md").read_text(), re.M)
  assert headings[0] == "Unreleased"
  assert headings[1].split(" - ")[0] == rin_diffusion.__version__

"""The documentation site builds offline with warnings as errors, API pages from the docstrings."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_docs_site_builds_strict_with_api_pages(tmp_path):
    out = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    engine_page = (out / "api" / "engine" / "index.html").read_text()
    # generated from the docstrings, not written by hand
    assert "SteerEngine" in engine_page and "call_options" in engine_page and "Decoder" not in engine_page
    assert "SteerLLM" in (out / "api" / "langchain" / "index.html").read_text()
    assert (out / "langchain" / "index.html").exists() and (out / "reliability" / "index.html").exists()


def test_every_relative_link_in_the_docs_resolves():
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = target.split("#")[0]
            if path and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, "\n".join(broken)

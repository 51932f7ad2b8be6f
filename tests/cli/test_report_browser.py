"""The HTML report in a real headless Chromium: the page loads, its table and images are there."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from steer_plugins.apps.cli import main
from steer_plugins.apps.report import write_report

CHROMIUM = shutil.which("chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")

REAL = [
    "Can exomoons around hot Jupiters survive tidal migration?",
    "Does the Zeldovich effect constrain cluster velocities?",
    "Are magnetars the engines of fast radio bursts?",
    "Could dark matter subhaloes perturb stellar streams?",
    "Do white dwarfs accrete planetary debris?",
    "Is the Hubble tension a sign of new physics?",
]


def _chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_evaluate_html_page_in_headless_chromium(tmp_path):
    real = _write(tmp_path / "real.jsonl", [{"text": t} for t in REAL])
    steer = _write(
        tmp_path / "steer.jsonl",
        [{"text": t.replace("stellar", "quasifersilish"), "finish_reason": "stop"} for t in REAL[::-1]],
    )
    plain = _write(tmp_path / "plain.jsonl", [{"text": t, "finish_reason": "length"} for t in REAL])
    page = tmp_path / "report.html"
    metrics = "normalised_3grams,distinct_2,invented_word_rate,completion_rate"
    argv = ["evaluate", "--reference", real, steer, plain, "--metrics", metrics, "--ci", "--resamples", "10"]
    assert main([*argv, "--html", str(page)]) == 0

    dom = _chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    assert '<table class="metrics" id="metrics">' in dom
    assert dom.count("<tr>") == 1 + 2  # header + two sets
    assert 'src="data:image/png;base64,' in dom  # the heat map, embedded
    assert '<mark title="invented word">quasifersilish</mark>' in dom
    assert "http://" not in dom.replace("http://www.w3.org", "")  # self-contained

    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_report_with_pareto_and_extra_image_renders_every_image(tmp_path):
    results = {
        "a": {
            "sample_size": 6,
            "normalised_3grams": 0.9,
            "cosine_centroid": 0.8,
            "ci": {"cosine_centroid": [0.7, 0.85]},
        },
        "b": {"sample_size": 6, "normalised_3grams": 0.7, "cosine_centroid": 0.9},
    }
    extra = tmp_path / "extra.png"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    fig.savefig(extra)
    plt.close(fig)
    page = write_report(
        tmp_path / "r.html",
        title="t",
        results=results,
        samples={"a": REAL[:3], "b": REAL[3:]},
        reference=REAL,
        images={"γ × η heat map: extra": extra},
    )
    dom = _chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    assert dom.count('src="data:image/png;base64,') == 3  # Pareto, sets × metrics map, extra
    assert "[0.700, 0.850]" in dom and "diversity vs fidelity" in dom

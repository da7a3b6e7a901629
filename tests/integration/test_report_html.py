"""Integration test for report.html: escaping, relative links, and a headless Chromium render.

A run folder is built by hand (no Ray, no model): two motions with moving-square GIFs,
frame-grid PNGs and reference GIFs (as the render stage writes them), plus a failure. The page must escape every
user string, link only to files inside the run folder, and render in a real browser
with every image loaded and no script error.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest

from motioncrafter.video import frame_grid, write_gif, write_png
from motioncrafter.runformat import Failure, RunLayout
from pipelines.report import write_html

EVIL = "<script>alert(1)</script> \"quoted\" 'single' & more"
MOTIONS = ("circle_left", "square_down")


def moving_square(t: int = 8, size: int = 32, color=(230, 80, 40), dx: int = 3, dy: int = 0) -> np.ndarray:
    frames = np.full((t, size, size, 3), 24, np.uint8)
    for i in range(t):
        x, y = (4 + dx * i) % (size - 8), (4 + dy * i) % (size - 8)
        frames[i, y:y + 8, x:x + 8] = color
    return frames


def build_run(tmp_path: Path) -> tuple[RunLayout, dict, list, list, list]:
    layout = RunLayout(str(tmp_path), "r")
    summary, results = [], []
    for row, motion_id in enumerate(MOTIONS):
        videos = []
        for k in range(2):
            video = moving_square(color=(230 - 90 * k, 80 + 60 * row, 40 + 100 * k), dx=3 - 3 * row, dy=3 * row)
            gif = layout.video(motion_id, k, "gif")
            write_gif(video, gif, fps=8)
            videos.append(video)
            results.append({"motion_id": motion_id, "row": row, "k": k, "prompt": f"a {k} {EVIL}", "seed": 100 + k,
                            "video_uri": layout.video(motion_id, k, "mp4"), "gif_uri": gif,
                            "motion_fidelity": 0.5 + 0.1 * k, "appearance_accuracy": 0.9 - 0.2 * row})
        write_png(frame_grid(videos), layout.grid(motion_id))
        write_gif(moving_square(color=(250, 250, 250), dx=2 * (1 - row), dy=2 * row), layout.reference_gif(motion_id), fps=8)
        summary.append({"motion_id": motion_id, "row": row, "prompt": f"reference {EVIL}",
                        "adapter_uri": f"{layout.root}/adapters/{motion_id}", "grid_uri": layout.grid(motion_id),
                        "train_seconds": 12.5 + row, "render_seconds": 3.25, "motion_fidelity": 0.61 - 0.2 * row,
                        "appearance_accuracy": 0.8, "leakage": 0.1 + 0.3 * row, "flow_fidelity": float("nan") if row else 0.7,
                        "temporal_consistency": 0.95, "num_videos": 2})
    failures = [Failure("bad_clip", 2, "ingest", f"could not decode {EVIL}")]
    info = {
        "run_id": "r", "status": "completed", "seconds": 61.2,
        "counts": {"rows": 3, "summary": 2, "failures": 1, "adapters": 2},
        "stages": {"ingest": {"seconds": 1.5, "clips": 2}, "train": {"seconds": 40.1}, "render_evaluate": {"seconds": 18.0}},
        "config": {"tune": {"mode": "motioncrafter", "steps": 200}, "model": {"base_model": ""}},
        "versions": {"motioncrafter": "0"},
    }
    return layout, info, summary, results, failures


@pytest.fixture
def report(tmp_path: Path) -> Path:
    layout, info, summary, results, failures = build_run(tmp_path)
    write_html(layout, info, summary, results, failures)
    return Path(layout.report)


def test_report_escapes_and_links_only_existing_relative_files(report: Path):
    page = report.read_text()
    root = report.parent
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&quot;quoted&quot;" in page and "&amp; more" in page
    assert "shipped MovingShapes base" in page and "motioncrafter" in page
    links = re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', page)
    assert not re.search(r"\b(?:src|href)\s*=\s*'", page)  # every link is double-quoted, so the list above is complete
    srcs = re.findall(r'<img[^>]*\bsrc="([^"]*)"', page)
    assert len(srcs) == len(MOTIONS) * 3  # a reference and two generated GIFs per motion
    for motion_id in MOTIONS:
        assert f"videos/{motion_id}/reference.gif" in srcs
        assert (root / "videos" / motion_id / "reference.gif").read_bytes()[:6] == b"GIF89a"
        assert f"grids/{motion_id}.png" in links
    for link in links:
        parts = urlsplit(link)
        assert not parts.scheme and not parts.netloc and not link.startswith("/"), link
        path = unquote(parts.path)
        assert ".." not in path.split("/"), link
        assert (root / path).is_file(), link


def _browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("no headless browser (chromium, chromium-browser or google-chrome) on PATH; "
                "`make test` installs chromium when it runs as root with apt-get")


def _chromium(browser: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=5000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})


def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path):
    browser = _browser()
    url = report.resolve().as_uri()

    dom = _chromium(browser, tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-images-ok="yes"' in dom.stdout, dom.stdout[-2000:]
    assert "<script>alert" not in dom.stdout
    console = [line for line in dom.stderr.splitlines() if "Uncaught" in line or "CONSOLE" in line]
    assert not console, "\n".join(console)

    # Sorting: a copy of the page (beside it, so its links still resolve) clicks "motion fidelity" once
    # (ascending) and records the order of the motion ids in the motions table.
    probe = report.with_name("report_sort_probe.html")
    probe.write_text(report.read_text().replace("</body>", """<script>
var th = [].find.call(document.querySelectorAll("table.motions th"),
                      function (h) { return h.textContent === "motion fidelity"; });
th.click();
document.body.dataset.order = [].map.call(document.querySelectorAll("table.motions tbody tr"),
                                          function (r) { return r.cells[0].textContent; }).join(",");
</script></body>"""))
    sorted_dom = _chromium(browser, tmp_path, "--dump-dom", probe.resolve().as_uri())
    assert 'data-order="square_down,circle_left"' in sorted_dom.stdout  # 0.41 before 0.61
    probe.unlink()

    screenshot = tmp_path / "report.png"
    shot = _chromium(browser, tmp_path, f"--screenshot={screenshot}", "--window-size=1200,1600", url)
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 10_000
    try:
        shutil.copyfile(screenshot, "/tmp/report_screenshot.png")  # for a person to look at
    except OSError:
        pass

"""report.html and its figures: self-contained, escaped, readable in a headless browser."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sslguard.data.images import SkippedFile
from sslguard.report import html as H
from sslguard.report import plots as P

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _png_ok(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        assert im.format == "PNG"
        return im.size


@pytest.fixture(scope="module")
def series():
    rng = np.random.default_rng(0)
    truth = np.zeros(200, bool)
    truth[:20] = True
    good = rng.normal(0, 1, 200) + 3 * truth
    noisy = rng.normal(0, 1, 200)
    noisy[5] = -np.inf  # a detector may leave images unscored
    return truth, [P.ScoreSeries("good", good, good > 2, 2.0), P.ScoreSeries("noisy", noisy, noisy > 1.5, 1.5)]


def test_figures_render_to_png(series, tmp_path):
    truth, ss = series
    rng = np.random.default_rng(1)
    figs = {
        "scores": P.score_histograms(ss, truth),
        "scores_no_truth": P.score_histograms(ss, None),
        "roc": P.roc_curves(ss, truth),
    }
    pos, xy = P.project_2d(rng.normal(size=(200, 16)), "pca")
    assert xy.shape == (200, 2) and np.array_equal(pos, np.arange(200))
    figs["embedding"] = P.embedding_map(xy, rng.integers(0, 5, 200), ss[0].flagged, truth)
    img = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    figs["gallery"] = P.flagged_gallery([P.GalleryItem(7, img, 0.9, "poisoncam", "3", np.ones((16, 16)), (2, 2, 4, 4), True),
                                         P.GalleryItem(8, img, 0.5, "fused", "", None, None, None)])
    figs["gallery_empty"] = P.flagged_gallery([])
    figs["classes"] = P.class_counts(np.repeat(np.arange(4), 50), ["a", "b", "c", "d"], ss[0].flagged, truth)
    figs["unlabeled"] = P.class_counts(np.full(200, -1), [], ss[0].flagged, None)
    figs["backdoor"] = P.backdoor_bars({"before": {"triggered": 0.8, "random_patch": 0.1, "knn_accuracy": 0.9}})
    for name, fig in figs.items():
        w, h = _png_ok(P.save_png(fig, tmp_path / f"{name}.png"))
        assert w > 100 and h > 100, name
        assert (tmp_path / f"{name}.png").stat().st_size > 0


def test_save_png_is_deterministic(series):
    truth, ss = series
    assert P.save_png(P.score_histograms(ss, truth)) == P.save_png(P.score_histograms(ss, truth))


def _content(png: bytes) -> H.ReportContent:
    evil = '<script>alert("x")</script>'
    return H.ReportContent(
        title="t <b>", subtitle="s", notices=[H.Notice("careful & <now>", "warn")],
        summary=[("images", 10), ("ratio", 0.25), ("path", evil)],
        metrics={"poisoncam": {"precision": 1.0, "recall": 0.5, "auroc": float("nan"), "n_flagged": 3}},
        figures=[H.Figure("scores", "Scores", png, "caption")],
        flagged_rows=[{"index": 1234, "path": f"/data/{evil}.png", "label": "0", "fused": 0.91, "poisoned": True}],
        flagged_columns=["index", "path", "label", "fused", "poisoned"], n_flagged=1,
        skipped=[SkippedFile(f"/data/{evil}", "zero-byte file")], outputs=[("scores.csv", "scores")],
        config_yaml="name: x\n")


def test_html_is_self_contained_and_escaped(series):
    truth, ss = series
    png = P.save_png(P.score_histograms(ss, truth))
    page = H.render_html(_content(png))
    assert "<script" not in page  # data cannot inject markup
    assert "&lt;script&gt;" in page
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:|//)""", page)  # nothing loaded from elsewhere
    assert "<link" not in page and "@import" not in page and "url(" not in page
    srcs = re.findall(r'<img[^>]*src="data:image/png;base64,([^"]+)"', page)
    assert len(srcs) == 1 and base64.b64decode(srcs[0]) == png
    assert ">1234<" in page  # an index is an identifier, printed without a thousands separator


# ------------------------------------------------------------------------------------------ browser

CHECK_SCRIPT = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0 && i.naturalHeight > 0); });
  var m = document.createElement("div");
  m.id = "sslguard-check";
  m.textContent = "IMAGES=" + imgs.length + " BROKEN=" + broken.length;
  document.body.appendChild(m);
});
</script>"""


def _chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", *extra,
           page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


def _check_in_browser(report: Path, tmp_path: Path) -> tuple[int, int, list[str]]:
    page = tmp_path / "checked.html"
    page.write_text(report.read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    proc = _chromium(page, tmp_path / "profile", "--dump-dom")
    m = re.search(r"IMAGES=(\d+) BROKEN=(\d+)", proc.stdout)
    assert m, f"the check marker is missing from the DOM: {proc.stderr[-2000:]}"
    return int(m.group(1)), int(m.group(2)), _console_errors(proc.stderr)


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    import sslguard
    from tests.test_pipeline import TINY

    out = tmp_path_factory.mktemp("report_run")
    return sslguard.detect(overrides=TINY + [f"output_dir={out}", "name=r"], quiet=True)


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary found")
def test_browser_check_catches_broken_pages(tmp_path):
    """The check itself can fail: a broken image and a script error are both seen."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><img src="data:image/png;base64,AAAA">'
                   "<script>undefinedFunction();</script></body></html>")
    n, broken, errors = _check_in_browser(bad, tmp_path)
    assert (n, broken) == (1, 1)
    assert errors, "a script error was not reported on the console log"


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary found")
def test_report_opens_in_headless_chromium(tiny_report, tmp_path):
    report = tiny_report.report_path
    n, broken, errors = _check_in_browser(report, tmp_path)
    n_figures = len(list((tiny_report.run_dir / "figures").glob("*.png")))
    assert n == n_figures and n >= 5
    assert broken == 0
    assert errors == []
    shot = tmp_path / "shot.png"
    proc = _chromium(report, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1280,2400")
    assert shot.exists(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.std() > 10  # a rendered page, not a blank one


def test_report_holds_the_promised_sections(tiny_report):
    page = tiny_report.report_path.read_text()
    for section in ("summary", "metrics", "scores", "roc", "embedding", "flagged_gallery", "classes", "flagged",
                    "skipped", "outputs"):
        assert f'id="{section}"' in page, section
    summary = tiny_report.summary
    assert summary["n_images"] == len(tiny_report.index)
    assert set(summary["metrics"]) == set(tiny_report.detections) | {"fused"}

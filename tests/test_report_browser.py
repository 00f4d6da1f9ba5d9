"""report.html opened in headless Chromium: the tables lay out and every image decodes.

CI installs Debian's ``chromium`` (see ``.ci/run``); where no Chromium binary is found the test
is skipped with the reason. A Chromium that is present but fails to start is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from potstill.report import build_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--mute-audio",
    "--hide-scrollbars",
]

# Appended to a *copy* of the report (the report itself has no script): after the load event, record
# what rendered into a <pre id="potstill-check"> element, which --dump-dom then prints.
CHECK = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var tables = Array.prototype.slice.call(document.querySelectorAll("table"));
  var out = {
    title: document.title,
    tables: tables.length,
    tables_laid_out: tables.filter(function (t) { var r = t.getBoundingClientRect(); return r.width > 0 && r.height > 0; }).length,
    table_rows: tables.map(function (t) { return t.rows.length; }),
    headers: tables.map(function (t) { return t.rows[0] ? t.rows[0].innerText : ""; }),
    images: imgs.length,
    images_decoded: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0 && i.naturalHeight > 0; }).length,
    images_shown: imgs.filter(function (i) { var r = i.getBoundingClientRect(); return r.width > 50 && r.height > 50; }).length,
    warnings: document.querySelectorAll("#warnings li").length
  };
  var pre = document.createElement("pre");
  pre.id = "potstill-check";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    path = find_browser()
    if path is None:
        pytest.skip(
            "no headless Chromium on this machine (looked for: " + ", ".join(BROWSERS) + "); "
            "install Debian's `chromium` (apt-get install -y chromium) to run the browser test"
        )
    return path


def run_browser(browser: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(tmp_path)}  # keep Chromium's caches out of the real home
    proc = subprocess.run(
        [browser, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, f"chromium failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def report_html(tmp_path_factory):
    from test_report_eval import full_inputs

    tmp = tmp_path_factory.mktemp("browser")
    report = build_report(*full_inputs(tmp), out_dir=tmp / "report")
    return tmp / "report" / "report.html", report


def test_report_renders_tables_and_images(browser, report_html, tmp_path):
    page, report = report_html
    source = page.read_text(encoding="utf-8")
    checked = tmp_path / "report-check.html"
    checked.write_text(source.replace("</body>", CHECK + "\n</body>"), encoding="utf-8")
    dom = run_browser(
        browser, tmp_path, "--virtual-time-budget=10000", "--window-size=1280,2000", "--dump-dom", checked.as_uri()
    ).stdout
    m = re.search(r'<pre id="potstill-check">(.*?)</pre>', dom, re.S)
    assert m, "the check script did not run:\n" + dom[-2000:]
    result = json.loads(
        m.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    )
    n_tables, n_images = source.count("<table"), source.count("<img ")
    assert result["title"] == "potstill report: helpdesk"
    assert result["tables"] == n_tables >= 10 and result["tables_laid_out"] == n_tables
    assert all(rows >= 2 for rows in result["table_rows"])  # a header and at least one body row each
    headers = " | ".join(result["headers"])
    for h in ("% of teacher", "McNemar p", "Win", "Top-1 agreement", "Exact"):
        assert h in headers, h
    assert result["images"] == n_images >= 7
    assert result["images_decoded"] == n_images, "an embedded PNG did not decode"
    assert result["images_shown"] == n_images, "an image has no visible size"
    assert result["warnings"] == len(report["warnings"]) == 2


def test_report_itself_loads_and_screenshots(browser, report_html, tmp_path):
    """The unmodified page (no script): the DOM keeps every table and image; the screenshot is not blank."""
    page, _ = report_html
    dom = run_browser(browser, tmp_path, "--dump-dom", page.as_uri()).stdout
    source = page.read_text(encoding="utf-8")
    assert dom.count("<table") == source.count("<table") and dom.count("<img ") == source.count("<img ")
    shot = tmp_path / "shot.png"
    run_browser(browser, tmp_path, "--window-size=1280,1600", f"--screenshot={shot}", page.as_uri())
    from matplotlib.image import imread

    pixels = imread(str(shot))
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1200
    assert float(pixels[..., :3].std()) > 0.05  # text, tables and plots, not an empty page

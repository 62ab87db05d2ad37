"""Open the HTML report in a real headless Chromium (Debian ``chromium`` + ``chromium-driver``).

Checks what a reader's browser sees: no console errors, no request other than the file itself, the
diagrams and tables in the DOM, data shown as text (never run as markup), and a full-page screenshot
in ``test-output/report.png``. A second page with a remote image and a failing script shows that the
two detectors do catch what they look for.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from report_fixture import NASTY, evaluations
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

from tokcal.report import write_html

OUTPUT = Path(__file__).resolve().parents[1] / "test-output"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,800")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver_path, "install the Debian packages chromium and chromium-driver (make browser)"
    opts = Options()
    opts.binary_location = chromium
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def visit(driver, path: Path) -> tuple[list[str], list[str]]:
    """Load ``path``; return (console errors, URLs requested other than the page itself)."""
    driver.get_log("browser")
    driver.get_log("performance")  # drop what earlier pages left
    url = path.resolve().as_uri()
    driver.get(url)
    driver.execute_script("return document.readyState")
    errors = [m["message"] for m in driver.get_log("browser") if m["level"] == "SEVERE"]
    requested = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            requested.append(msg["params"]["request"]["url"])
    requested += driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    return errors, [u for u in requested if u != url]


def test_detectors_catch_requests_and_console_errors(browser, tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/remote.png">'
                   '<script>console.error("boom")</script></body></html>')
    errors, requested = visit(browser, bad)
    assert any("boom" in m for m in errors)
    assert "http://127.0.0.1:9/remote.png" in requested


def test_report_in_chromium(browser, tmp_path):
    evs = evaluations()
    path = write_html(tmp_path / "report.html", evs, title="browser test")
    errors, requested = visit(browser, path)
    assert errors == []
    assert requested == []

    js = browser.execute_script
    assert js("return document.title") == "browser test"
    assert js("return document.scripts.length") == 1  # the sorting script, allowed by its hash alone
    assert js("return document.querySelectorAll('#diagrams figure svg').length") == 3
    assert js("return document.querySelectorAll('#signatures').length") == 1
    for fig in ("reliability", "confidence_histogram", "risk_coverage"):  # drawn, not empty boxes
        box = js(f"const r = document.querySelector('#fig-{fig} svg').getBoundingClientRect();"
                 "return [r.width, r.height]")
        assert box[0] > 200 and box[1] > 150, (fig, box)
        assert js(f"return document.querySelectorAll('#fig-{fig} svg path').length") > 10
    assert js("return document.querySelectorAll('#overview tbody tr').length") == len(evs)
    n_slice_rows = sum(len(rows) for ev in evs.values() for rows in ev["slices"].values())
    assert js("return document.querySelectorAll('#slices tbody tr').length") == n_slice_rows
    n_sig = sum(r["significant"] for ev in evs.values() for rows in ev["slices"].values() for r in rows)
    assert js("return document.querySelectorAll('#slices tr.sig-over, #slices tr.sig-under').length") == n_sig
    assert js("return document.querySelectorAll('#worst-tokens tbody tr').length") == sum(
        len(ev["worst_tokens"]) for ev in evs.values())
    assert js("return document.querySelectorAll('#passage .passage span').length") == sum(
        len(ev["passage"]) for ev in evs.values())
    # token strings arrive as text, not markup
    worst_text = js("return document.querySelector('#worst-tokens').innerText")
    shown = [t["token"] for ev in evs.values() for t in ev["worst_tokens"] if t["token"] in NASTY]
    assert any("<" in t for t in shown), "fixture should list a token with markup characters"
    for tok in shown:
        if tok.strip():
            assert tok.strip() in worst_text

    # tables fit the page: nothing scrolls sideways at 1280 px
    assert js("return document.documentElement.scrollWidth") <= 1280
    wide = js("return [...document.querySelectorAll('div.scroll')].filter(d => d.scrollWidth > d.clientWidth + 1)"
              ".map(d => d.parentElement.id + ':' + d.scrollWidth + '>' + d.clientWidth)")
    assert wide == [], wide

    height = js("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(height + 40, 12000))
    OUTPUT.mkdir(exist_ok=True)
    shot = OUTPUT / "report.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000


def test_tables_sort_by_a_clicked_header_under_the_strict_csp(browser, tmp_path):
    """The hashed inline script runs (no CSP violation) and sorts a table by the clicked column: numbers by
    value (the interval after a value is ignored; a missing value last), text alphabetically, again: reversed."""
    from tokcal.report.html import SORT_SCRIPT_HASH

    evs = evaluations()
    path = write_html(tmp_path / "sorting.html", evs, title="sorting")
    page = path.read_text()
    assert f"script-src '{SORT_SCRIPT_HASH}'" in page and "'unsafe-inline'" not in page.split("script-src")[1][:80]
    errors, requested = visit(browser, path)
    assert errors == [] and requested == []
    js = browser.execute_script

    def column(table: str, col: int) -> list[str]:
        return js(f"return [...document.querySelector({json.dumps(table)}).tBodies[0].rows]"
                  f".map(r => r.cells[{col}].innerText)")

    def click(table: str, col: int) -> str:
        th = f"document.querySelector({json.dumps(table)}).tHead.rows[0].cells[{col}]"
        js(f"{th}.querySelector('button').click()")
        return js(f"return {th}.getAttribute('aria-sort')")

    def value(cell: str) -> float:
        return float(cell.replace("\u2212", "-").replace(",", "").split()[0])

    table = "#slices table"  # the first slice table: numbers, text, intervals under values
    heads = js(f"return [...document.querySelector({json.dumps(table)}).tHead.rows[0].cells].map(h => h.innerText)")
    ece = next(i for i, h in enumerate(heads) if h.strip().startswith("ECE"))
    before = column(table, ece)
    assert click(table, ece) == "ascending"
    up = column(table, ece)
    numbers = [value(c) for c in up if c.strip() and c.strip()[0] in "0123456789-\u2212."]
    assert numbers == sorted(numbers) and sorted(up) == sorted(before), up  # the same rows, reordered
    assert click(table, ece) == "descending"
    down = [value(c) for c in column(table, ece) if c.strip() and c.strip()[0] in "0123456789-\u2212."]
    assert down == sorted(numbers, reverse=True)
    assert click(table, 0) == "ascending"  # the value column: text, in the browser's collation
    names = column(table, 0)
    assert names == js("return arguments[0].slice().sort((a, b) => a.localeCompare(b))", names)
    assert js(f"return document.querySelector({json.dumps(table)}).querySelectorAll('th[aria-sort]').length") == 1


def test_verdict_and_per_group_diagrams_are_visible_without_scrolling(browser, tmp_path):
    """At a 1280 x 800 viewport the headline and the per-group reliability diagrams are on the first screen."""
    evs = evaluations()
    path = write_html(tmp_path / "first-screen.html", evs, title="first screen")
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})
    try:
        errors, requested = visit(browser, path)
        assert errors == [] and requested == []
        js = browser.execute_script
        assert js("return [window.innerWidth, window.innerHeight]") == [1280, 800]
        assert js("return window.scrollY") == 0

        def box(selector: str) -> dict:
            return js(f"const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
                      "return {top: r.top, bottom: r.bottom, left: r.left, right: r.right, w: r.width, h: r.height}")

        head = box("#headline")
        assert 0 <= head["top"] and head["bottom"] <= 800 and head["right"] <= 1280, head
        text = js("return document.querySelector('#headline p.verdict').innerText")
        assert "cuts ECE" in text and "paired difference" in text
        group = box("#fig-slice-0 svg")  # group:domain, the first small multiple
        assert head["bottom"] <= group["top"] and group["bottom"] <= 800 and group["right"] <= 1280, group
        assert group["w"] > 250 and group["h"] > 150, group
        assert "group:domain" in js("return document.querySelector('#fig-slice-0 figcaption').innerText")
        assert js("return document.querySelectorAll('#fig-slice-0 svg path').length") > 20  # drawn, not empty
        OUTPUT.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(OUTPUT / "report-first-screen.png"))
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

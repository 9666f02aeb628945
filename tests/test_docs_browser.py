"""The documentation site as a reader sees it: built, then opened in headless Chromium.

The site is served from 127.0.0.1 as ``mkdocs serve`` or any static server would. Checks that
formulas are typeset (MathML laid out, no raw LaTeX left in the text), that no page asks for
anything beyond the site's own files (it reads offline: no CDN, no web fonts), and that no page
logs a console error. Needs Debian's ``chromium`` (or another Chromium on PATH) and the
``playwright`` package; skipped with the reason where either is missing. The screenshot of the
theory page is kept in the test's temporary folder.
"""

import functools
import http.server
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[1]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium on PATH (Debian: apt-get install chromium)")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    if shutil.which("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[test]')")
    folder = tmp_path_factory.mktemp("site")
    command = ["mkdocs", "build", "--strict", "--site-dir", str(folder)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder


@pytest.fixture(scope="module")
def served(site) -> str:
    """The built site's base URL on 127.0.0.1."""
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def browser():
    executable = chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


def visit(browser, url: str, screenshot: Path | None = None) -> dict:
    """Open one page; what it requested, logged as errors, and how its math came out."""
    page = browser.new_page()
    requests, errors = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_load_state("networkidle")
    result = {
        "requests": requests,
        "errors": errors,
        "math": page.locator("math").count(),
        "laid_out": page.evaluate(
            "Array.from(document.querySelectorAll('math')).filter("
            "m => m.getBoundingClientRect().height > 0).length"
        ),
        "text": page.inner_text("article"),
        "unknown_commands": page.evaluate(  # LaTeX the converter passed through as text
            "Array.from(document.querySelectorAll('math'))"
            ".filter(m => m.textContent.includes('\\\\')).map(m => m.textContent)"
        ),
        "steps": page.locator("article li").filter(has_text="-step").count(),
    }
    if screenshot:
        page.screenshot(path=str(screenshot), full_page=True)
    page.close()
    return result


def outside(requests: list[str], base: str) -> list[str]:
    return [url for url in requests if not url.startswith((base, "data:"))]


def test_theory_page_is_typeset_offline_without_errors(served, browser, tmp_path):
    shot = tmp_path / "theory.png"
    seen = visit(browser, served + "theory.html", shot)
    assert seen["math"] >= 40 and seen["laid_out"] == seen["math"]
    for raw in ("$$", "\\frac", "\\mathbb", "\\mid", "\\("):
        assert raw not in seen["text"], f"raw LaTeX {raw!r} visible"
    assert not seen["unknown_commands"], seen["unknown_commands"]
    assert seen["steps"] >= 4  # the E- and M-step bullets of section 6 are list items
    assert not outside(seen["requests"], served), seen["requests"]
    assert not seen["errors"], seen["errors"]
    assert shot.stat().st_size > 50_000


def test_every_page_loads_offline_without_errors_or_raw_math(site, served, browser):
    for page_file in sorted(site.glob("*.html")):
        if page_file.name == "404.html":
            continue
        seen = visit(browser, served + page_file.name)
        assert not outside(seen["requests"], served), (page_file.name, seen["requests"])
        assert not seen["errors"], (page_file.name, seen["errors"])
        assert "$$" not in seen["text"], page_file.name
        roles = re.findall(r":(?:class|func|meth|mod|attr|data|exc):\S+", seen["text"])
        assert not roles, (page_file.name, roles[:5])  # docstrings' Sphinx roles, as text
        assert seen["laid_out"] == seen["math"], page_file.name
        assert not seen["unknown_commands"], (page_file.name, seen["unknown_commands"])


def test_display_formulas_are_in_display_style_with_no_vertical_scrollbar(served, browser):
    """Every display formula of the theory page: TeX's display style (limits under sums and
    min, as in the lectures), and no block taller inside than out (a vertical scrollbar)."""
    page = browser.new_page()
    page.goto(served + "theory.html")
    page.wait_for_load_state("networkidle")
    blocks = page.evaluate(
        "Array.from(document.querySelectorAll('.math-block')).map(b => ({"
        "style: getComputedStyle(b.querySelector('math')).mathStyle,"
        "overflow: b.scrollHeight - b.clientHeight}))"
    )
    page.close()
    assert len(blocks) >= 10
    assert {b["style"] for b in blocks} == {"normal"}
    assert max(b["overflow"] for b in blocks) <= 0, blocks

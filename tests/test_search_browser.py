"""The web page in a real headless Chromium (Debian's `chromium`, driven by Playwright): type a query, results
appear, click one, the attention view appears; a picture dropped on the page finds captions. Screenshots are saved
in the test's folder."""

from __future__ import annotations

import base64
import socket
import threading
from pathlib import Path

import pytest
import uvicorn

from search_support import draw_picture, picture_index
from itmatch.search import Searcher
from itmatch.serve.app import create_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                              "(scripts/install_system_deps.sh installs it as root)")


@pytest.fixture(scope="module")
def server_url():
    """The app on a free loopback port, served by uvicorn on a thread for the module's tests."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(Searcher(picture_index()), shortlist=8), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the test server did not start")
        threading.Event().wait(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def page(server_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.errors = []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        page.on("console", lambda message: message.type == "error" and page.errors.append(message.text))
        page.goto(server_url)
        yield page
        browser.close()


def test_text_query_results_and_attention_view(page, tmp_path):
    page.wait_for_selector("#gallery-size:has-text('10 pictures')")
    page.fill("#query", "a red circle")
    page.press("#query", "Enter")
    page.wait_for_selector(".result img")
    assert page.locator(".result").count() == 10  # top 24 of 10 pictures
    page.wait_for_function("[...document.querySelectorAll('.result img')].every(i => i.complete && i.naturalWidth)")
    assert "re-ranked" in page.inner_text("#status")
    page.screenshot(path=str(tmp_path / "results.png"), full_page=True)

    page.locator(".result").first.click()
    page.wait_for_selector("#attention:not([hidden])")
    assert page.locator("#words .word").all_inner_texts() == ["<start>", "a", "red", "circle", "<end>"]
    assert page.locator("#attention-model option").count() == 2
    page.locator("#words .word", has_text="circle").click()
    assert page.locator("#words .word.selected").inner_text() == "circle"
    shades = page.evaluate("""() => {
        const c = document.getElementById('attention-canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const seen = new Set();
        for (let i = 0; i < d.length; i += 4 * 97) seen.add(d[i] + ',' + d[i + 1] + ',' + d[i + 2]);
        return seen.size;
    }""")
    assert shades > 10  # the picture, shaded: not a blank canvas
    assert page.locator("#gates .gate").count() == 0  # SGR has no filtration weights
    page.select_option("#attention-model", "1")
    assert page.locator("#gates .gate").count() == 5  # SAF: one bar per word
    page.screenshot(path=str(tmp_path / "attention.png"), full_page=True)
    assert (tmp_path / "attention.png").stat().st_size > 10_000
    assert page.errors == []


def test_a_dropped_picture_finds_captions(page, tmp_path):
    picture = draw_picture(tmp_path / "drop.png", (200, 80, 30), "square").read_bytes()
    page.evaluate("""(data) => {
        const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], 'drop.png', {type: 'image/png'}));
        const drop = document.getElementById('drop');
        drop.dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
    }""", base64.b64encode(picture).decode())
    page.wait_for_selector("#status:has-text('captions for drop.png')")
    assert page.locator(".result").count() == 20
    page.locator(".result").first.click()
    page.wait_for_selector("#attention:not([hidden])")
    page.screenshot(path=str(tmp_path / "dropped.png"), full_page=True)
    page.fill("#query", "   ")
    page.press("#query", "Enter")  # a blank query is not sent: the captions stay
    assert page.locator(".result").count() == 20
    assert page.errors == []

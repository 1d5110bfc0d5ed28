"""The browser app in a real browser: headless Chromium (Debian's `chromium` package,
which `.ci/run` installs) driven by Playwright through that system binary (Playwright's
own browsers are never downloaded). It draws two boxes, types the prompts, generates
with the built-in model, sees the layer images appear, toggles one, and downloads the
PSD, which psd-tools opens."""

from __future__ import annotations

import os
import shutil

import pytest

STEPS = "2"


def chromium_binary() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser",
                      "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


@pytest.fixture(scope="module")
def page(app_server):
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium; .ci/run "
                    "installs it)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (the test extra)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 860},
                                      accept_downloads=True)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(app_server.url + "/")
        page.wait_for_selector("#model-info:has-text('builtin')")
        page.errors = errors
        yield page
        browser.close()


def drag(page, selector: str, start: tuple[float, float], end: tuple[float, float]) -> None:
    """Drag with the mouse from one point to another, in fractions of the element."""
    box = page.locator(selector).bounding_box()
    page.mouse.move(box["x"] + start[0] * box["width"], box["y"] + start[1] * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + end[0] * box["width"], box["y"] + end[1] * box["height"],
                    steps=6)
    page.mouse.up()


def test_compose_generate_and_download_psd(page, tmp_path):
    drag(page, "#compose-stage", (0.1, 0.45), (0.5, 0.9))
    page.fill("#compose-layers li:nth-child(1) input.layer-prompt", "a small red star")
    drag(page, "#compose-stage", (0.45, 0.15), (0.95, 0.7))
    page.fill("#compose-layers li:nth-child(2) input.layer-prompt", "a large green ring")
    assert page.locator("#compose-stage .box").count() == 2
    page.fill("#bg-prompt", "a striped blue wall")
    page.fill("#steps", STEPS)

    page.fill("#bg-prompt", "")  # an empty prompt: a message in the page, nothing queued
    page.click("#generate")
    page.wait_for_selector("#message:has-text('background must be a non-empty string')")
    page.fill("#bg-prompt", "a striped blue wall")

    page.click("#generate")
    page.wait_for_selector("#queue li.mine")
    page.wait_for_selector("#result-view img.layer-img.fg", timeout=240_000)
    page.wait_for_function("[...document.querySelectorAll('#result-view img')].every("
                           "i => i.complete && i.naturalWidth > 0)")
    files = page.eval_on_selector_all("#result-view .stack img.layer-img",
                                      "els => els.map(e => e.dataset.file)")
    assert files == ["background.png", "layer_01.png", "layer_02.png"]
    assert page.locator("#result-view .tile img").count() == 4  # bg, 2 fgs, global
    toggle = page.locator("#result-view .visibility input[data-file='layer_01.png']")
    toggle.uncheck()
    hidden = page.eval_on_selector("#result-view .stack img[data-file='layer_01.png']",
                                   "e => getComputedStyle(e).visibility")
    assert hidden == "hidden"

    with page.expect_download() as download:
        page.click("#result-view a[data-download='layers.psd']")
    path = tmp_path / "layers.psd"
    download.value.save_as(path)
    from psd_tools import PSDImage

    psd = PSDImage.open(path)
    names = [layer.name for layer in psd.descendants()]
    assert any("a small red star" in n for n in names), names
    assert any("a large green ring" in n for n in names), names
    assert psd.width == psd.height == int(page.evaluate(
        "fetch('/api/info').then(r => r.json()).then(i => i.resolution)"))
    assert not page.errors

"""The page of emosent serve in headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium): choose a video and subtitles, upload, wait for the timeline, click an utterance, and
the player is at its start. The API documentation (/docs) renders with every host but the server's
unreachable."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from serving import Server, talk, tiny_model

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or not CHROMEDRIVER.exists(),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does it)")
# the machines here have no network: no sandbox (root), nothing fetched in the background
CHROMIUM_ARGS = ("--headless=new", "--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-dev-shm-usage", "--window-size=1280,1200")


# every host name but the server's own address resolves to nothing: a page that needs a CDN breaks
NO_NETWORK_ARGS = ("--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",)


def chromium(*extra: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (*CHROMIUM_ARGS, *extra):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))


@pytest.fixture
def browser():
    driver = chromium()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module's tests (a start costs torch's imports and the model's load)."""
    root = tmp_path_factory.mktemp("serve")
    running = Server(tiny_model(root / "model"), root / "data").start()
    yield running
    running.stop()


@pytest.fixture
def offline_browser():
    driver = chromium(*NO_NETWORK_ARGS)
    yield driver
    driver.quit()


def test_upload_timeline_and_click_to_seek(browser, server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    video, subtitles = talk(tmp_path / "clip")
    browser.get(f"{server.url}/")
    browser.find_element(By.ID, "video").send_keys(str(video))
    browser.find_element(By.ID, "subtitles").send_keys(str(subtitles))
    browser.find_element(By.ID, "submit").click()

    segments = WebDriverWait(browser, 120).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#emotion-track .seg"))
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None, browser.find_element(By.ID, "error").text
    assert len(segments) == 2 and len(browser.find_elements(By.CSS_SELECTOR, "#sentiment-track .seg")) == 2
    rows = browser.find_elements(By.CSS_SELECTOR, "#utterances tbody tr")
    assert [r.find_elements(By.TAG_NAME, "td")[3].text for r in rows] == ["I am so furious about this", "What a wonderful surprise"]
    # subtitles that name no speaker: the service tells voices apart (one tone, one voice: S1 twice),
    # so the speaker column, the filter and one summary line for S1 are shown
    assert browser.find_element(By.CSS_SELECTOR, "#utterances th.speaker-col").is_displayed()
    assert [r.find_elements(By.TAG_NAME, "td")[2].text for r in rows] == ["S1", "S1"]
    assert browser.find_element(By.ID, "filter-row").is_displayed()
    summary = browser.find_elements(By.CSS_SELECTOR, "#speakers tbody tr")
    assert [r.find_elements(By.TAG_NAME, "td")[0].text for r in summary] == ["S1"]
    assert browser.find_element(By.ID, "upload-progress").get_property("value") == 1
    assert browser.find_element(By.ID, "analysis-progress").get_property("value") == 1
    link = browser.find_element(By.ID, "download")
    assert link.get_attribute("href").startswith("blob:") and link.get_attribute("download") == "talk.emosent.json"

    player = "return document.getElementById('player')"
    # the player plays the chosen file: its metadata is read (a 2-second video)
    WebDriverWait(browser, 30).until(lambda d: d.execute_script(f"{player}.readyState") >= 1)
    assert browser.execute_script(f"{player}.duration") == pytest.approx(2.0, abs=0.1)
    segments[1].click()  # the second utterance starts at 1.0 s (the SRT)
    WebDriverWait(browser, 10).until(lambda d: abs(d.execute_script(f"{player}.currentTime") - 1.0) < 0.05)
    assert "current" in rows[1].get_attribute("class") and "current" in segments[1].get_attribute("class")

    browser.set_window_size(1280, 1500)
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(tmp_path / "page.png"))
    browser.set_window_size(390, 1700)  # a phone's width: the page reflows, the timeline stays usable
    browser.save_screenshot(str(tmp_path / "phone.png"))
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 390
    print(f"screenshots: {tmp_path / 'page.png'}, {tmp_path / 'phone.png'}")


def test_speakers_shown_summed_up_and_filtered(browser, server, tmp_path):
    import json

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    video, _ = talk(tmp_path / "clip")
    transcript = tmp_path / "clip" / "talk.json"
    transcript.write_text(json.dumps([{"start": 0.0, "end": 0.6, "text": "I am so furious", "speaker": "Ann"},
                                      {"start": 0.6, "end": 1.2, "text": "calm down", "speaker": "Bob"},
                                      {"start": 1.2, "end": 1.9, "text": "what a wonderful surprise", "speaker": "Ann"}]))
    browser.get(f"{server.url}/")
    browser.find_element(By.ID, "video").send_keys(str(video))
    browser.find_element(By.ID, "subtitles").send_keys(str(transcript))
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 120).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#emotion-track .seg")) == 3)
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None, browser.find_element(By.ID, "error").text

    rows = browser.find_elements(By.CSS_SELECTOR, "#utterances tbody tr")
    assert [[td.text for td in r.find_elements(By.TAG_NAME, "td")[2:4]] for r in rows] == [
        ["Ann", "I am so furious"], ["Bob", "calm down"], ["Ann", "what a wonderful surprise"]]
    # the summary is the result's: one line per speaker, in order of first appearance
    result = browser.execute_script("return current.result")
    summary = [[td.text for td in r.find_elements(By.TAG_NAME, "td")] for r in browser.find_elements(By.CSS_SELECTOR, "#speakers tbody tr")]
    assert [(s[0], s[1]) for s in summary] == [("Ann", "2"), ("Bob", "1")]
    ann = result["speakers"][0]
    assert summary[0][2] == f"{ann['spoken_s']:.1f} s ({round(100 * ann['spoken_share'])}%)" == "1.3 s (68%)"
    top = max(ann["emotions"], key=ann["emotions"].get)
    assert f"{top} {round(100 * ann['emotions'][top])}%" in summary[0][3]
    assert summary[0][5].startswith(ann["sentiment_movement"]["trend"] + ":") and summary[1][5] == "—"

    # the filter: only Bob's utterance in the table, the others' bands dimmed on the timeline
    Select(browser.find_element(By.ID, "speaker-filter")).select_by_visible_text("Bob")
    assert [r.is_displayed() for r in rows] == [False, True, False]
    dimmed = [("dimmed" in s.get_attribute("class")) for s in browser.find_elements(By.CSS_SELECTOR, "#emotion-track .seg")]
    assert dimmed == [True, False, True]
    Select(browser.find_element(By.ID, "speaker-filter")).select_by_visible_text("all speakers")
    assert all(r.is_displayed() for r in rows) and not browser.find_elements(By.CSS_SELECTOR, ".seg.dimmed")
    browser.set_window_size(1280, 1600)
    browser.save_screenshot(str(tmp_path / "speakers.png"))
    browser.set_window_size(390, 1700)
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 390
    print(f"screenshot: {tmp_path / 'speakers.png'}")


def test_the_api_docs_render_offline(offline_browser, server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    offline_browser.get(f"{server.url}/docs")
    # Swagger UI has read /openapi.json and drawn one block per operation
    blocks = WebDriverWait(offline_browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
    paths = {b.get_attribute("data-path") or b.text for b in blocks}
    assert {"/v1/analyses", "/healthz", "/v1/info"} <= paths, paths
    assert "emosent" in offline_browser.find_element(By.CSS_SELECTOR, ".info .title").text
    loaded = offline_browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert any(url.endswith("/docs-static/swagger-ui-bundle.js") for url in loaded), loaded
    assert all(url.startswith(server.url) for url in loaded), loaded  # nothing from another host
    offline_browser.save_screenshot(str(tmp_path / "docs.png"))
    print(f"screenshot: {tmp_path / 'docs.png'}")

"""`tsmixit serve` in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`, through Selenium) loads the page from a live server, uploads a two-voice
mixture, waits for the players, plays one, sees a refused file's message, and keeps a
screenshot in tests/artifacts/ (git-ignored)."""

import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import utterance
from tsmixit.model_files import save_model
from tsmixit.models.conv_tasnet import ConvTasNet
from tsmixit.serve import create_app, load_models

SR = 8000
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                "(pip install -e '.[dev]')")
if CHROMIUM is None or DRIVER is None:
    pytest.skip("headless Chromium is absent: apt-get install chromium chromium-driver "
                "(.ci/run does)", allow_module_level=True)

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


class LiveServer:
    """uvicorn serving `app` on a free loopback port in a thread."""

    def __init__(self, app) -> None:
        import uvicorn

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1200,900", "--autoplay-policy=no-user-gesture-required",
                 "--hide-scrollbars", "--mute-audio"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def test_upload_in_the_page_gives_one_playable_player_per_voice(browser, tmp_path):
    save_model(ConvTasNet.from_preset("tiny", n_sources=2, consistency="uniform"),
               tmp_path / "model", SR)
    rng = np.random.default_rng(7)
    voices = [utterance(rng, 3.0), utterance(rng, 3.0)]
    sf.write(tmp_path / "two voices.wav", voices[0] + voices[1], SR, subtype="PCM_16")
    sf.write(tmp_path / "silence.wav", np.zeros(SR, np.float32), SR)
    work = tmp_path / "work"
    work.mkdir()
    sf.write(tmp_path / "long.wav", np.tile(voices[0], 5), SR, subtype="PCM_16")  # 240 kB
    app = create_app(load_models([tmp_path / "model"], "cpu"), work_dir=work,
                     chunk_seconds=1.0, overlap_seconds=0.25, max_upload_mb=0.1)
    wait = WebDriverWait(browser, 60)
    with LiveServer(app) as url:
        browser.get(url + "/")
        wait.until(lambda d: d.find_element(By.ID, "model-meta").text)
        assert "2 outputs" in browser.find_element(By.ID, "model-meta").text

        browser.find_element(By.ID, "file").send_keys(str(tmp_path / "two voices.wav"))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#tracks .track")) == 3)
        cards = browser.find_elements(By.CSS_SELECTOR, "#tracks .track")
        assert [c.get_attribute("data-track") for c in cards] == ["mixture", "s1", "s2"]
        assert [c.find_element(By.TAG_NAME, "h3").text for c in cards] == [
            "Mixture", "Voice 1", "Voice 2"]
        # Every player's source loads in the browser: metadata read, the file's duration.
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('#tracks audio')]"
            ".every(a => a.readyState >= 1)"))
        audio = browser.execute_script(
            "return [...document.querySelectorAll('#tracks audio')].map(a => "
            "[a.currentSrc, a.duration, a.error && a.error.code])")
        assert [src.rsplit("/", 1)[1] for src, _, _ in audio] == ["mixture", "s1", "s2"]
        for _, duration, error in audio:
            assert error is None and duration == pytest.approx(3.0, abs=1e-3)
        images = browser.execute_script(
            "return [...document.querySelectorAll('#tracks img.spec')].map(i => "
            "i.complete && i.naturalWidth)")
        assert len(images) == 3 and all(images)
        title = browser.find_element(By.ID, "result-title").text
        assert title == "two voices.wav"
        assert browser.find_element(By.ID, "zip").get_attribute("href").endswith("/all.zip")

        # Playing: the button plays voice 1 and its clock moves.
        cards[1].find_element(By.CSS_SELECTOR, "button.play").click()
        wait.until(lambda d: d.execute_script(
            "return document.querySelectorAll('#tracks audio')[1].currentTime > 0.2"))
        cards[1].find_element(By.CSS_SELECTOR, "button.play").click()  # pause
        time.sleep(0.3)
        ARTIFACTS.mkdir(exist_ok=True)
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(1200, height + 200)
        browser.execute_script("window.scrollTo(0, 0)")
        shot = ARTIFACTS / "serve_separate.png"
        browser.save_screenshot(str(shot))
        print(f"screenshot: {shot}")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # A refused recording: the CLI's message in the page, the server still serves.
        browser.find_element(By.ID, "file").send_keys(str(tmp_path / "silence.wav"))
        wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
        message = browser.find_element(By.ID, "error").text
        assert "silence.wav: the recording is silent (digital silence" in message
        assert browser.find_element(By.ID, "results").is_displayed() is False

        # Over the upload limit: the page says so before sending; and when the page's own
        # check is bypassed, the server's HTTP 413 message reaches the page.
        browser.find_element(By.ID, "file").send_keys(str(tmp_path / "long.wav"))
        wait.until(lambda d: "upload limit of 0.1 MB" in d.find_element(By.ID, "error").text)
        assert "long.wav (0.2 MB) is larger" in browser.find_element(By.ID, "error").text
        _assert_no_console_errors(browser)
        browser.execute_script("state.info.max_upload_bytes = 1e12")
        browser.find_element(By.ID, "file").send_keys(str(tmp_path / "long.wav"))
        wait.until(lambda d: "--max-upload-mb" in d.find_element(By.ID, "error").text)
        assert "long.wav (0.2 MB) is larger than this server's upload limit of 0.1 MB" in (
            browser.find_element(By.ID, "error").text)
        logs = browser.get_log("browser")  # the refused upload: the one console error
        assert [("413" in e["message"]) for e in logs if e["level"] == "SEVERE"] == [True]
    assert list(work.iterdir()) == []


def _assert_no_console_errors(browser) -> None:
    """Nothing the page loads is refused (the CSP, a 404) and no script fails."""
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []


def _run_audio(browser) -> list[list]:
    """[track key, duration, error code] of each player of the shown mixture."""
    return browser.execute_script(
        "return [...document.querySelectorAll('#run-examples .mixture-holder audio')].map("
        "a => [a.closest('.track').dataset.track, a.duration, a.error && a.error.code])")


def test_run_tab_shows_the_table_claims_plots_and_playable_examples(browser, tmp_path):
    from test_serve import MIXTURES, _make_run

    run = tmp_path / "run"
    _make_run(run)
    save_model(ConvTasNet.from_preset("tiny", n_sources=2), tmp_path / "model", SR)
    app = create_app(load_models([tmp_path / "model"], "cpu"), run_dir=run, work_dir=tmp_path)
    wait = WebDriverWait(browser, 60)
    with LiveServer(app) as url:
        browser.set_window_size(1200, 900)
        browser.get(url + "/#run")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#run-table tbody tr"))
        rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#run-table tbody tr")]
        assert [r.split(" 1 ")[0] for r in rows] == [
            "MixIT teacher (top-2)", "MixIT teacher (oracle grouping into 2)", "TS-MixIT student"]
        assert len(browser.find_elements(By.CSS_SELECTOR, "#run-claims li")) >= 2
        tabs = browser.find_elements(By.CSS_SELECTOR, "#run-examples .pick")
        assert [t.get_attribute("data-mixture") for t in tabs] == list(MIXTURES)
        assert [t.get_attribute("aria-selected") for t in tabs] == ["true", "false", "false"]

        # Each mixture picked in turn: its mixture + 2 true sources; the teacher's 2
        # estimates, 2 groups, 2 left out; the student's 2 estimates; all of its length.
        keys = ["mixture", "reference1", "reference2", "estimate1", "estimate2", "group1",
                "group2", "output2", "output4", "estimate1", "estimate2"]
        for i, (row_id, frames) in enumerate(MIXTURES.items()):
            tabs[i].click()
            wait.until(lambda d, n=frames: (lambda a: len(a) == 11 and all(
                x[1] == pytest.approx(n / SR, abs=1e-3) for x in a))(_run_audio(d)))
            audio = _run_audio(browser)
            assert [key for key, _, _ in audio] == keys
            colours = browser.execute_script(
                "return [...document.querySelectorAll('#run-examples .mixture-holder .track')]"
                ".map(t => t.style.getPropertyValue('--hue'))")
            # estimate i and oracle group i in one colour, the outputs left out in grey
            assert colours[3:9] == [colours[1], colours[2], colours[1], colours[2],
                                    colours[0], colours[0]] and colours[1] != colours[2]
            assert all(error is None for _, _, error in audio)
            heads = [h.text for h in browser.find_elements(
                By.CSS_SELECTOR, "#run-examples .mixture-holder .system-head h3")]
            assert heads == ["Mixture and true sources", "MixIT teacher (top-2)",
                             "TS-MixIT student"]
            scores = [s.text for s in browser.find_elements(
                By.CSS_SELECTOR, "#run-examples .mixture-holder .score")]
            offset = 0.25 * (i - 1)  # test_serve._make_run's per-mixture scores
            assert scores == [f"SI-SNRi {3 + offset:.2f} dB top-2 · {4 + offset:.2f} dB oracle",
                              f"SI-SNRi {5 + offset:.2f} dB"]
            assert row_id in browser.find_element(
                By.CSS_SELECTOR, "#run-examples .system.truth .meta").text
            # The student's first estimate plays and its clock moves.
            student = browser.find_elements(
                By.CSS_SELECTOR, "#run-examples .mixture-holder [data-system=student] .track")[0]
            student.find_element(By.CSS_SELECTOR, "button.play").click()
            wait.until(lambda d: d.execute_script(
                "const a = [...document.querySelectorAll('#run-examples .mixture-holder "
                "[data-system=student] audio')][0]; return !a.paused && a.currentTime > 0.1"))
            student.find_element(By.CSS_SELECTOR, "button.play").click()  # pause
            spectrograms = browser.execute_script(
                "return [...document.querySelectorAll('#run-examples .mixture-holder img.spec')]"
                ".map(i => i.complete && i.naturalWidth)")
            assert len(spectrograms) == 11

        # Back to a mixture seen before: shown again (kept), the others' players stopped.
        tabs[0].click()
        wait.until(lambda d: (lambda a: len(a) == 11 and a[0][1] == pytest.approx(1.0))(
            _run_audio(d)))
        assert browser.execute_script(
            "return [...document.querySelectorAll('audio')].every(a => a.paused)")
        plots = browser.execute_script(
            "return [...document.querySelectorAll('#run-plots img')].map(i => "
            "i.complete && i.naturalWidth)")
        assert len(plots) == 4  # the report's four plots, each loaded
        browser.execute_script("document.getElementById('run-plots').scrollIntoView()")
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('#run-plots img')].every(i => "
            "i.complete && i.naturalWidth > 0)"))
        _assert_no_console_errors(browser)

        tabs[1].click()  # the screenshot: the second mixture, its images loaded
        wait.until(lambda d: (lambda a: len(a) == 11 and a[0][1] == pytest.approx(0.75))(
            _run_audio(d)))
        ARTIFACTS.mkdir(exist_ok=True)
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(1200, height + 200)
        browser.execute_script("window.scrollTo(0, 0)")
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('img')].every(i => i.complete && "
            "i.naturalWidth > 0)"))
        shot = ARTIFACTS / "serve_run.png"
        browser.save_screenshot(str(shot))
        print(f"screenshot: {shot}")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        browser.set_window_size(1200, 900)

"""The serve page in a real browser: headless Chromium (Debian's chromium and chromium-driver, driven
by Selenium) chooses a photo and shows its top class, as the server's own API answers it."""

import base64
import os
import shutil

import numpy as np
import pytest
import requests
from PIL import Image
from server_process import ServerProcess

DRIVER = shutil.which("chromedriver")
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
NO_BROWSER = "no Chromium with its driver to open the page in (Debian: apt-get install chromium chromium-driver)"


@pytest.fixture
def browser():
    if DRIVER is None or CHROMIUM is None:  # as the report's browser test: skipped here, never in CI
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but there is {NO_BROWSER}: CI must run the browser test", pytrace=False)
        pytest.skip(NO_BROWSER)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # --no-sandbox: CI and containers run as root, where Chromium's sandbox refuses to start.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=390,844"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)  # Debian's driver: nothing is downloaded
    yield driver
    driver.quit()


def test_choosing_a_photo_on_a_phone_sized_page_shows_its_top_class(trained_run, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = tmp_path / "red flower.jpg"
    pixels = np.random.default_rng(0).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    pixels[..., 0] = 255
    Image.fromarray(pixels).save(photo)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    server = ServerProcess("--run-dir", str(trained_run))
    try:
        answer = requests.post(f"{server.url}/predict", files=[("file", (photo.name, photo.read_bytes()))], timeout=60)
        top = answer.json()["predictions"][0]["top_k"][0]

        browser.get(server.url + "/")
        assert browser.title.startswith("flowerft")
        browser.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(photo))
        label = WebDriverWait(browser, 60).until(lambda b: b.find_elements(By.CSS_SELECTOR, ".card .row .label"))[0]
        assert label.text == top["label"]
        first = browser.find_element(By.CSS_SELECTOR, ".card .row")
        assert f"{100 * top['probability']:.1f}%" in first.text
        assert len(browser.find_elements(By.CSS_SELECTOR, ".card .row")) == 3  # the top-3 bars
        assert browser.find_element(By.CSS_SELECTOR, ".card .name").text == photo.name
        image_loaded = browser.execute_script("const i = document.querySelector('.card img'); return i.complete && i.naturalWidth")
        assert image_loaded == 90

        browser.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(broken))
        error = WebDriverWait(browser, 60).until(lambda b: b.find_elements(By.CSS_SELECTOR, ".card .error"))[0]
        assert "broken.png: not an image" in error.text
        # Dropped on the page (the drag-and-drop a desktop user does), as a browser delivers a dropped file.
        browser.execute_script("""
            const [b64, name] = arguments;
            const file = new File([Uint8Array.from(atob(b64), c => c.charCodeAt(0))], name, {type: "image/jpeg"});
            const data = new DataTransfer();
            data.items.add(file);
            const drop = document.getElementById("drop");
            for (const type of ["dragover", "drop"]) {
                drop.dispatchEvent(new DragEvent(type, {dataTransfer: data, bubbles: true, cancelable: true}));
            }
        """, base64.b64encode(photo.read_bytes()).decode(), "dropped.jpg")
        dropped = WebDriverWait(browser, 60).until(lambda b: [
            card for card in b.find_elements(By.CSS_SELECTOR, ".card")
            if card.find_elements(By.CSS_SELECTOR, ".name") and card.find_element(By.CSS_SELECTOR, ".name").text == "dropped.jpg"
            and card.find_elements(By.CSS_SELECTOR, ".row .label")])[0]
        assert dropped.find_element(By.CSS_SELECTOR, ".row .label").text == top["label"]
        assert "over" not in browser.find_element(By.ID, "drop").get_attribute("class")
        # usable on a phone: nothing wider than its screen
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")

        shot = tmp_path / "page.png"
        browser.save_screenshot(str(shot))
        gray = np.asarray(Image.open(shot).convert("L"), dtype=float)
        assert gray.std() > 20  # text, the photo and the bars are drawn
    finally:
        server.stop()

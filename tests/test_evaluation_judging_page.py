"""The Ins-align judging page in headless Chromium: click verdicts, export, read the downloaded JSON back.

Needs Debian's chromium + chromium-driver (`make system-deps`) and the selenium package; skipped otherwise.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from evaluation_fixtures import pattern_image

from model.evaluation.judging import JUDGEMENTS_FORMAT, JudgingEntry, ins_align, write_judging_page

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
selenium = pytest.importorskip("selenium", reason="selenium not installed (pip install selenium)")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="headless Chromium not installed (apt-get install -y chromium chromium-driver, or `make system-deps`)",
)


def _entries(tmp_path: Path) -> list[JudgingEntry]:
    entries = []
    for i, (category, group) in enumerate((("1-Left-Right", "understanding"), ("4-Color", "understanding"),
                                           ("6-Reasoning", "reasoning"))):
        src, out = tmp_path / f"in{i}.png", tmp_path / f"out{i}.png"
        pattern_image(i, 48).save(src)
        pattern_image(50 + i, 48).save(out)
        instruction = "make the cup </script> red & shiny" if i == 0 else f"instruction {i}"
        entries.append(JudgingEntry(f"{category}/00{i}", 0, category, group, instruction, src, out))
    return entries


def _driver(download_dir: Path, profile_dir: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile_dir}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(download_dir),
                                              "download.prompt_for_download": False})
    # An explicit driver path keeps Selenium Manager (which would go online) out of it.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    return driver


def _wait_for_file(folder: Path, pattern: str, timeout: float = 30.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [p for p in folder.glob(pattern) if not p.name.endswith(".crdownload")]
        if done:
            return done[0]
        time.sleep(0.1)
    raise AssertionError(f"no {pattern} downloaded into {folder}: {list(folder.iterdir())}")


def _wait_for_text(driver, element_id: str, text: str, timeout: float = 10.0) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(driver, timeout).until(lambda d: d.find_element(By.ID, element_id).text == text)
    except Exception:  # noqa: BLE001 - the assertion after the wait reports what the page shows
        pass


def test_judging_page_click_export_and_aggregate(tmp_path):
    from selenium.webdriver.common.by import By

    entries = _entries(tmp_path)
    page = write_judging_page(entries, tmp_path / "judging.html", page_id="tiny-official")
    downloads, profile = tmp_path / "downloads", tmp_path / "profile"
    downloads.mkdir()
    profile.mkdir()
    driver = _driver(downloads, profile)
    try:
        driver.get(page.as_uri())
        cards = driver.find_elements(By.CSS_SELECTOR, ".card")
        assert len(cards) == 3
        # the instruction is shown as text, markup inside it stays inert
        assert cards[0].find_element(By.CSS_SELECTOR, ".instruction").text == entries[0].instruction
        assert all(img.get_attribute("naturalWidth") == "48" for img in driver.find_elements(By.TAG_NAME, "img"))
        assert driver.find_element(By.ID, "progress").text == "0 / 3 judged"

        cards[0].find_element(By.CSS_SELECTOR, "button.no").click()
        cards[0].find_element(By.CSS_SELECTOR, "button.yes").click()  # a change of mind: the last click counts
        cards[2].find_element(By.CSS_SELECTOR, "button.no").click()
        assert "follows" in cards[0].get_attribute("class") and "not-follows" in cards[2].get_attribute("class")
        assert driver.find_element(By.ID, "progress").text == "2 / 3 judged"

        # Chromium hands localStorage writes to its storage service asynchronously; a reload in the same instant
        # can race them (seen ~1 in 6 runs on a loaded machine). A person reloads seconds later: so does the test.
        time.sleep(1.0)
        driver.refresh()  # verdicts survive a reload (localStorage)
        # the page restores verdicts in its load script: wait for it (up to 10 s) before reading the counter
        _wait_for_text(driver, "progress", "2 / 3 judged")
        assert driver.find_element(By.ID, "progress").text == "2 / 3 judged"
        driver.find_element(By.ID, "judge").send_keys("dana")
        driver.find_element(By.ID, "export").click()
        exported = _wait_for_file(downloads, "ins_align_judgements_tiny-official*.json")
        data = json.loads(exported.read_text())
        shown = json.loads(driver.find_element(By.ID, "export-json").get_attribute("textContent"))
    finally:
        driver.quit()

    assert data == shown
    assert data["format"] == JUDGEMENTS_FORMAT and data["judge"] == "dana" and data["total"] == 3
    assert {(j["key"], j["follows"]) for j in data["judgements"]} == {("1-Left-Right/000", True), ("6-Reasoning/002", False)}
    assert data["unjudged"] == [{"key": "4-Color/001", "seed": 0}]
    result = ins_align([exported])
    assert result.groups == {"reasoning": 0.0, "understanding": 1.0} and result.unjudged == 1

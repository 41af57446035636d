"""The HTML report in a real headless browser: Debian's chromium, driven by Selenium through the system
chromedriver (nothing is downloaded). Skipped where either is missing, unless AUTORESEARCH_REQUIRE_BROWSER is set
(CI sets it, so a missing browser fails there)."""
from __future__ import annotations

import os
import shutil

import pytest

from toytask import edit, write_toy_task

XSS = '<img src="x" onerror="document.title=\'pwned\'"> a bias flag'
SCRIPT = [
    {"edits": [edit("steps = 20", "steps = 80")], "hypothesis": "Train longer: 80 steps."},   # keep
    {"edits": [edit("use_bias = False", "use_bias = True")], "hypothesis": XSS},              # discard
    {"edits": [edit("steps = 80", "steps = int('x')")], "hypothesis": "Broken steps."},       # crash
]


def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
    if not (chromium and driver and webdriver):
        missing = [n for n, v in (("chromium", chromium), ("chromedriver", driver), ("selenium", webdriver)) if not v]
        if os.environ.get("AUTORESEARCH_REQUIRE_BROWSER"):
            pytest.fail(f"the browser test is required here but {', '.join(missing)} is missing "
                        f"(apt-get install chromium chromium-driver; pip install selenium)")
        pytest.skip(f"no headless browser here: {', '.join(missing)} missing")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def test_report_in_a_real_browser(toy, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("SE_OFFLINE", "true")       # Selenium Manager: never fetch a browser or driver
    write_toy_task(tmp_path, script=SCRIPT, seeds=(0,))
    r = toy.run("tasks/toy", "--autoresearch-trials", "3", "--autoresearch-agent", "scripted")
    assert r.returncode == 0, r.output
    page = tmp_path / ".autoresearch" / "toy" / "report.html"
    assert [x["label"] for x in toy.records()] == ["baseline", "keep", "discard", "crash"]

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = _browser()
    try:
        driver.get(page.as_uri())
        assert driver.title == "toy: autoresearch report"
        assert driver.find_element(By.ID, "task").text == "toy: minimize mse"
        assert driver.execute_script("return document.getElementById('plot').naturalWidth") == 1100   # PNG decoded

        def visible() -> list[int]:
            return [int(r.get_attribute("data-trial")) for r in driver.find_elements(By.CSS_SELECTOR, "tr.trial")
                    if r.is_displayed()]

        count = driver.find_element(By.ID, "shown-count")
        assert visible() == [0, 1, 2, 3] and count.text == "4 of 4 trials"
        spec, label = Select(driver.find_element(By.ID, "filter-specialist")), Select(
            driver.find_element(By.ID, "filter-label"))
        assert [o.text for o in spec.options] == ["all", "arch", "baseline", "opt"]
        spec.select_by_value("opt")
        assert visible() == [1, 3] and count.text == "2 of 4 trials"
        label.select_by_value("crash")
        assert visible() == [3]
        spec.select_by_value("")
        label.select_by_value("keep")
        assert visible() == [1]
        label.select_by_value("")
        driver.find_element(By.ID, "filter-text").send_keys("bias")
        assert visible() == [2]
        driver.find_element(By.ID, "filter-text").clear()
        driver.execute_script("document.getElementById('filter-text').dispatchEvent(new Event('input'))")
        assert visible() == [0, 1, 2, 3]

        # click a trial: its details and its diff
        driver.find_element(By.CSS_SELECTOR, 'tr.trial[data-trial="1"]').click()
        assert driver.find_element(By.ID, "detail-title").text == "Trial 1 [opt] keep"
        assert driver.find_element(By.ID, "detail-hypothesis").text == "Train longer: 80 steps."
        adds = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#detail-diff span.add")]
        dels = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#detail-diff span.del")]
        assert adds == ["+steps = 80  # range: 1..2000"] and dels == ["-steps = 20  # range: 1..2000"]
        assert "mse_per_seed" in driver.find_element(By.ID, "detail-metrics").text
        assert "selected" in driver.find_element(By.CSS_SELECTOR, 'tr.trial[data-trial="1"]').get_attribute("class")
        driver.find_element(By.ID, "detail-parent").click()       # ancestry is one click away
        assert driver.find_element(By.ID, "detail-title").text == "Trial 0 [baseline] baseline"

        # the crash shows its notes; agent-written markup stays text
        driver.find_element(By.CSS_SELECTOR, 'tr.trial[data-trial="3"]').click()
        assert "ValueError: invalid literal for int()" in driver.find_element(By.ID, "detail-notes").text
        driver.find_element(By.CSS_SELECTOR, 'tr.trial[data-trial="2"]').click()
        assert driver.find_element(By.ID, "detail-hypothesis").text == XSS
        assert not driver.find_elements(By.CSS_SELECTOR, 'img[src="x"]') and driver.title != "pwned"

        # the path from the baseline to the best: open a step's diff
        step = driver.find_element(By.CSS_SELECTOR, 'li.step[data-trial="1"]')
        pre = step.find_element(By.CSS_SELECTOR, "pre.diff")
        assert not pre.is_displayed()
        step.find_element(By.TAG_NAME, "summary").click()
        assert pre.is_displayed() and "+steps = 80" in pre.text
        assert [int(s.get_attribute("data-trial")) for s in driver.find_elements(By.CSS_SELECTOR, "li.step")] == [0, 1]
    finally:
        driver.quit()

"""The status page in a real headless Chromium: log in with the admin token, see an account's
usage bars in local time, create a key and read its one-time secret, disable it, search the
logs; screenshots go to test-artifacts/."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from tests.adminkit import result, set_usage
from tests.conftest import REPO, RESPONSES_BODY

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = REPO / "test-artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                       reason="needs Debian chromium and chromium-driver"),
]


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium'}",
                "--window-size=1440,1000", "--force-device-scale-factor=1", "--lang=en-US"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait(driver, condition, timeout: float = 10):
    return WebDriverWait(driver, timeout).until(condition)


def screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1440, max(900, min(int(height) + 40, 2400)))
    path = ARTIFACTS / name
    assert driver.save_screenshot(str(path))
    driver.set_window_size(1440, 1000)
    return path


def test_status_page_in_chromium(make_proxy, fake, browser):
    proxy = make_proxy(accounts=2)
    set_usage(proxy, fake, 0, primary=62.0, secondary=18.0, primary_reset_in=2 * 3600 + 13 * 60)
    set_usage(proxy, fake, 1, primary=91.0, secondary=47.0)
    for _ in range(3):
        assert httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth).status_code == 200
    httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers={"authorization": "Bearer cpk-not-a-key"})
    driver = browser

    # Log in through the form with the admin token.
    driver.get(proxy.url + "/status/accounts")
    wait(driver, EC.presence_of_element_located((By.NAME, "token")))
    assert "/status/login" in driver.current_url
    screenshot(driver, "status-login.png")
    field = driver.find_element(By.NAME, "token")
    field.send_keys("wrong-token")
    field.submit()
    wait(driver, EC.presence_of_element_located((By.CSS_SELECTOR, ".flash.error")))
    assert "Wrong admin token" in driver.find_element(By.CSS_SELECTOR, ".flash.error").text
    field = driver.find_element(By.NAME, "token")
    field.send_keys(proxy.admin_token)
    field.submit()
    wait(driver, EC.url_contains("/status/accounts"))
    cookie = driver.get_cookie("codexproxy_session")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert driver.execute_script("return document.cookie") == ""  # HttpOnly: no script can read it

    # The accounts with their usage bars, reset times in local time.
    page = driver.find_element(By.TAG_NAME, "main").text
    assert proxy.fake_accounts[0].email in page and proxy.fake_accounts[1].email in page
    bars = driver.find_elements(By.CSS_SELECTOR, "progress.bar")
    values = sorted(float(b.get_attribute("value")) for b in bars)
    assert values == [18.0, 47.0, 62.0, 91.0]
    assert "bad" in driver.find_element(By.CSS_SELECTOR, "progress.bar[value='91.0']").get_attribute("class")
    times = [t.text for t in driver.find_elements(By.CSS_SELECTOR, "time[data-rel]")]
    assert times and all("UTC" not in t for t in times) and any("(in 2h1" in t for t in times), times
    assert "local time" in driver.find_element(By.ID, "tz").text
    screenshot(driver, "status-accounts.png")

    # Dashboard.
    driver.find_element(By.LINK_TEXT, "Dashboard").click()
    wait(driver, EC.presence_of_element_located((By.CSS_SELECTOR, ".stat-value")))
    assert "Pool usage" in driver.page_source
    screenshot(driver, "status.png")
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    screenshot(driver, "status-dark.png")
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})

    # Create a key through the form and read the one-time secret.
    driver.find_element(By.LINK_TEXT, "Keys").click()
    form = wait(driver, EC.presence_of_element_located((By.ID, "create-key")))
    form.find_element(By.NAME, "name").send_keys("browser-key")
    form.find_element(By.NAME, "rpm").send_keys("30")
    form.find_element(By.NAME, "expires").send_keys("30d")
    form.find_element(By.CSS_SELECTOR, "button.primary").click()
    secret_field = wait(driver, EC.presence_of_element_located((By.ID, "new-key")))
    secret = secret_field.get_attribute("value")
    assert secret.startswith("cpk-")
    screenshot(driver, "status-key-created.png")
    r = httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers={"authorization": f"Bearer {secret}"})
    assert r.status_code == 200

    # Disable it from the keys table.
    driver.find_element(By.LINK_TEXT, "Done: back to the keys").click()
    key_id = next(k["id"] for k in result(proxy, "keys.list") if k["name"] == "browser-key")
    row = wait(driver, EC.presence_of_element_located((By.ID, key_id)))
    assert secret not in driver.page_source
    row.find_element(By.XPATH, ".//button[normalize-space()='Disable']").click()
    wait(driver, EC.presence_of_element_located((By.CSS_SELECTOR, ".flash.ok")))
    assert "Disabled key browser-key." in driver.find_element(By.CSS_SELECTOR, ".flash.ok").text
    assert "disabled" in driver.find_element(By.ID, key_id).text
    assert next(k for k in result(proxy, "keys.list") if k["id"] == key_id)["enabled"] is False
    r = httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers={"authorization": f"Bearer {secret}"})
    assert r.status_code == 403
    screenshot(driver, "status-keys.png")

    # Search the logs.
    driver.find_element(By.LINK_TEXT, "Logs").click()
    search = wait(driver, EC.presence_of_element_located((By.NAME, "q")))
    search.send_keys("status:4xx")
    search.submit()
    wait(driver, EC.url_contains("q=status"))
    rows = driver.find_elements(By.CSS_SELECTOR, "table.logs tbody tr")
    assert len(rows) == 2  # the unknown key (401) and the disabled one (403)
    assert all(r.find_element(By.CSS_SELECTOR, ".code").text in ("401", "403") for r in rows)
    driver.find_element(By.NAME, "q").clear()
    driver.find_element(By.NAME, "q").send_keys("key:=test")
    driver.find_element(By.NAME, "q").submit()
    wait(driver, EC.url_contains("key%3A%3Dtest"))
    assert len(driver.find_elements(By.CSS_SELECTOR, "table.logs tbody tr")) == 3
    driver.get(proxy.url + "/status/logs")
    screenshot(driver, "status-logs.png")

    # Plugins and settings (secrets masked).
    driver.find_element(By.LINK_TEXT, "Plugins").click()
    wait(driver, EC.presence_of_element_located((By.CSS_SELECTOR, "table.table")))
    assert "select_account" in driver.page_source
    screenshot(driver, "status-plugins.png")
    driver.find_element(By.LINK_TEXT, "Settings").click()
    wait(driver, EC.presence_of_element_located((By.CSS_SELECTOR, "dl.facts")))
    assert proxy.admin_token not in driver.page_source
    screenshot(driver, "status-settings.png")

    # Log out: the pages need a login again.
    driver.find_element(By.XPATH, "//button[normalize-space()='Log out']").click()
    wait(driver, EC.presence_of_element_located((By.NAME, "token")))
    driver.get(proxy.url + "/status/keys")
    assert "/status/login" in driver.current_url

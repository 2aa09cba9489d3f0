"""The web page in a real browser: Debian's Chromium through ChromeDriver
(selenium), against the release binary on a scratch database.

BATCH_HISTORY_BIN: the server binary (default: the repository's release build).
Screenshots go to target/browser-screenshots/.
"""
import contextlib
import importlib.util
import pathlib
import socket

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

REPO = pathlib.Path(__file__).resolve().parents[2]
# The client suite's scratch server, under a name of its own.
_spec = importlib.util.spec_from_file_location(
    "client_suite", REPO / "clients/python/tests/conftest.py")
client_suite = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(client_suite)

SCREENSHOTS = REPO / "target/browser-screenshots"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def page_server(**extra_env):
    """A server with its web page on; yields (grpc address, page URL)."""
    ui = f"127.0.0.1:{free_port()}"
    with client_suite.serve(dict(extra_env, UI_ADDR=ui)) as server:
        yield server.addr, f"http://{ui}"


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def screenshot(browser):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(name):
        browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
    return take

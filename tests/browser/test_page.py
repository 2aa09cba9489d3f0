"""What an operator sees in the browser, driven through gRPC as the dashboard
drives the service."""
import time
import urllib.error
import urllib.request

import pytest
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from batch_history_client import BatchHistory, Batch
from conftest import page_server


def wait_for(browser, condition, what, timeout=10):
    return WebDriverWait(browser, timeout).until(lambda _: condition(), message=what)


def follow(browser, selector, by=By.CSS_SELECTOR):
    """Clicks what loads another page, and waits until it has replaced this
    one: a click returns before the page it asked for has loaded (a sign-in
    may even wait its turn first). This document is marked, and the wait
    ends once the document in the window carries no mark; while the window
    is between documents, the driver's errors only mean "not yet"."""
    browser.execute_script("document.documentElement.dataset.leaving = 'yes'")
    browser.find_element(by, selector).click()
    WebDriverWait(browser, 10, ignored_exceptions=(WebDriverException,)).until(
        lambda b: b.execute_script("return document.documentElement.dataset.leaving") is None,
        message=f"clicking {selector} loaded no page")


# Read in one script each: a live update may replace an element between
# finding it and reading it.
def read_one(browser, selector, prop):
    return browser.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e[arguments[1]] : null",
        selector, prop)


def read_all(browser, selector, prop):
    return browser.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e[arguments[1]])",
        selector, prop)


def text(browser, selector):
    return read_one(browser, selector, "innerText")


def progress_value(browser, batch_id):
    return read_one(browser, f'[id="batch-{batch_id}"] progress', "value")


def row_ids(browser):
    return [row_id.removeprefix("batch-") for row_id in read_all(browser, "#batch-rows tr", "id")]


def row_states(browser):
    return read_all(browser, "#batch-rows .state", "innerText")


@pytest.fixture(scope="module")
def service():
    with page_server() as (addr, url):
        client = BatchHistory(addr, timezone="UTC")
        yield client, url
        client.close()


def test_progress_moves_live_and_the_detail_shows_errors_and_switches(service, browser, screenshot):
    client, url = service
    browser.get(url + "/")
    wait_for(browser, lambda: text(browser, "#live-status") == "Live", "the page did not go live")

    batch_id = client.start(provider="groq", model="llama-3.3-70b", target=100,
                            topic_filter="contracts", difficulty_filter="hard")
    wait_for(browser, lambda: progress_value(browser, batch_id) == 0,
             "a batch created after the page loaded did not appear")
    for done in (25, 50, 75):
        client.progress(batch_id, samples=25, tokens=1000)
        wait_for(browser, lambda: progress_value(browser, batch_id) == done,
                 f"the progress bar did not reach {done}")
    assert "75 / 100" in text(browser, f'[id="batch-{batch_id}"]')
    screenshot("01-history-live-progress")

    follow(browser, batch_id, By.LINK_TEXT)
    wait_for(browser, lambda: text(browser, "#live-status") == "Live", "the detail did not go live")
    assert "No errors." in text(browser, "#batch-detail")
    client.progress(batch_id, samples=5, errors=[{"error": "rate limited by provider",
                                                  "timestamp": "2026-11-26T10:00:00",
                                                  "retry_after": 30}])
    wait_for(browser, lambda: text(browser, "ol.errors .message") == "rate limited by provider",
             "a reported error did not appear on the open detail")
    assert "2026-11-26 10:00:00" in text(browser, "ol.errors .when")
    assert "retry_after" in text(browser, "ol.errors pre")
    client.progress(batch_id, model_switches=[{"from_model": "llama-3.3-70b",
                                               "to_model": "llama-3.1-8b",
                                               "reason": "rate limit", "at_sample": 80}])
    wait_for(browser, lambda: "llama-3.1-8b" in (text(browser, "ol.timeline") or ""),
             "a model switch did not appear on the open detail")
    screenshot("02-detail-error-and-switch")

    client.finish(batch_id, state=Batch.FAILED, error="provider gave up")
    wait_for(browser, lambda: text(browser, "#batch-detail .state") == "FAILED",
             "the detail did not show the batch failing")
    wait_for(browser, lambda: text(browser, "#live-status") == "Up to date",
             "the detail kept following a finished batch")
    assert "provider gave up" in text(browser, "ol.errors")


def test_filter_by_state_and_page_forward_and_back(service, browser, screenshot):
    client, url = service
    failed = set()
    for i in range(120):
        batch_id = client.start(provider="cerebras", model="qwen-3-32b", target=10,
                                batch_id=f"paging_{i:03d}")
        if i % 10 == 0:
            client.finish(batch_id, state=Batch.FAILED)
            failed.add(batch_id)

    browser.get(url + "/")
    first = row_ids(browser)
    assert len(first) == 50
    follow(browser, "a[rel=next]")
    second = row_ids(browser)
    follow(browser, "a[rel=next]")
    third = row_ids(browser)
    assert len(second) == 50 and third and not set(first) & set(second)
    assert not set(second) & set(third)
    follow(browser, "a[rel=prev]")
    assert row_ids(browser) == second, "back one page is not the page before"
    follow(browser, "a[rel=prev]")
    assert row_ids(browser) == first, "back to the first page is not the first page"
    assert browser.find_elements(By.CSS_SELECTOR, "a[rel=prev]") == []

    browser.find_element(By.CSS_SELECTOR, ".filter-box summary").click()
    browser.find_element(By.CSS_SELECTOR, 'input[name=states][value=FAILED]').click()
    browser.find_element(By.CSS_SELECTOR, "input[name=provider]").send_keys("cerebras")
    follow(browser, ".filters button[type=submit]")
    wait_for(browser, lambda: "states=FAILED" in browser.current_url, "the filter was not applied")
    assert set(row_ids(browser)) == failed and set(row_states(browser)) == {"FAILED"}
    assert browser.find_element(By.CSS_SELECTOR, ".filter-box").get_attribute("open") is not None
    screenshot("03-history-filtered-failed")

    follow(browser, "Stats for these filters", By.LINK_TEXT)
    assert text(browser, "#main .totals").startswith("12 batches")
    browser.get(url + "/stats?provider=cerebras")
    assert text(browser, "#main .totals").startswith("120 batches")
    by_state = browser.find_element(By.CSS_SELECTOR, 'svg[aria-labelledby="by-state"]')
    assert by_state.text.split("\n") == ["RUNNING", "108", "COMPLETED", "0", "STOPPED", "0", "FAILED", "12"]
    by_model = browser.find_element(By.CSS_SELECTOR, 'svg[aria-labelledby="by-model"]')
    assert by_model.text.split("\n") == ["cerebras / qwen-3-32b", "0"]
    screenshot("04-stats")

    browser.get(url + "/?started_after=yesterday")
    assert "started_after" in text(browser, ".error")


def test_phone_width_keeps_the_page_within_the_screen(service, browser, screenshot):
    client, url = service
    client.start(provider="groq", model="llama-3.3-70b", target=40)
    browser.set_window_size(390, 844)
    browser.get(url + "/")
    overflow = browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than a phone's screen"
    table_overflow = browser.execute_script(
        "const wrap = document.querySelector('.table-wrap');"
        " return wrap.scrollWidth - wrap.clientWidth")
    assert table_overflow <= 0, f"the history table needs {table_overflow}px of sideways scrolling"
    for control in browser.find_elements(By.CSS_SELECTOR, "input, button, progress, a"):
        name = browser.execute_script(
            "const e = arguments[0]; return e.labels && e.labels.length ? e.labels[0].textContent"
            " : e.getAttribute('aria-label') || e.textContent", control)
        assert name and name.strip(), control.get_attribute("outerHTML")
    screenshot("05-phone-width")


def test_with_a_token_the_page_asks_for_it_and_never_puts_it_in_an_address(browser, screenshot):
    token = "page-test-token-5d1e"
    with page_server(AUTH_TOKEN=token) as (_, url):
        browser.get(url + "/")
        assert browser.current_url == url + "/login"
        assert browser.find_elements(By.CSS_SELECTOR, "#batch-rows") == []
        assert browser.find_elements(By.CSS_SELECTOR, ".sign-out, nav a") == []
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + "/events?")
        assert refused.value.code == 401
        with urllib.request.urlopen(url + "/stats") as redirected:
            assert redirected.url == url + "/login"
            assert "Batches per state" not in redirected.read().decode()

        browser.find_element(By.NAME, "token").send_keys("not-the-token")
        follow(browser, "form.login button")
        # The click submits; the answer is another page, loaded after it returns.
        wait_for(browser, lambda: "not the one" in (text(browser, ".error") or ""),
                 "a wrong token was not refused with a message")
        screenshot("06-sign-in-refused")
        browser.find_element(By.NAME, "token").send_keys(token)
        follow(browser, "form.login button")
        wait_for(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#batch-rows"),
                 "the right token did not open the history")
        wait_for(browser, lambda: text(browser, "#live-status") == "Live", "signed in, not live")
        assert token not in browser.current_url
        cookies = browser.get_cookies()
        assert cookies and all(token not in c["value"] and c["httpOnly"] for c in cookies)

        follow(browser, ".sign-out button")
        wait_for(browser, lambda: browser.current_url == url + "/login", "signing out did not end")
        browser.get(url + "/")
        assert browser.current_url == url + "/login"

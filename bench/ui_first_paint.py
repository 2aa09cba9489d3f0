"""Time to first paint of the web page over a large history, in Chromium.

Seeds ROWS batches (default 1,000,000) with bench/seed.sql into a scratch
database, serves it with the release binary, and loads each page five times
in headless Chromium, printing the medians of the server's time to first
byte and the browser's first contentful paint.

    .ci/venv/bin/python bench/ui_first_paint.py [ROWS]

Needs: a release build, psql, the PostgreSQL at TEST_DATABASE_URL (default
127.0.0.1:5432), chromium and chromedriver, selenium (.ci/venv).
"""
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

REPO = pathlib.Path(__file__).resolve().parents[1]
BINARY = REPO / "target/release/batch-history"
LOADS = 5


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psql(url, *args):
    subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-q", *args], check=True)


def timings(browser):
    # The paint entry can land after the load event that ends browser.get.
    return browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const nav = performance.getEntriesByType('navigation')[0];
        new PerformanceObserver((list, observer) => {
            const paint = list.getEntriesByName('first-contentful-paint')[0];
            if (paint) {
                observer.disconnect();
                done([nav.responseStart - nav.requestStart, paint.startTime]);
            }
        }).observe({type: 'paint', buffered: true});
    """)


def measure(browser, name, load):
    firsts, paints = [], []
    for _ in range(LOADS):
        load()
        first_byte, paint = timings(browser)
        firsts.append(first_byte)
        paints.append(paint)
    print(f"{name:<44} first byte {statistics.median(firsts):6.1f} ms   "
          f"first contentful paint {statistics.median(paints):6.1f} ms   "
          f"(of {LOADS}: {min(paints):.0f}-{max(paints):.0f})")


def main():
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    admin = os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    database = f"bh_ui_bench_{uuid.uuid4().hex[:8]}"
    url = urlunsplit(urlsplit(admin)._replace(path="/" + database))
    psql(admin, "-c", f"CREATE DATABASE {database}")
    server = None
    try:
        subprocess.run([BINARY, "migrate"], env=dict(os.environ, DATABASE_URL=url,
                                                     LOG_FORMAT="json"), check=True,
                       stderr=subprocess.DEVNULL)
        started = time.monotonic()
        psql(url, "-v", f"rows={rows}", "-f", str(REPO / "bench/seed.sql"))
        print(f"seeded {rows:,} batches in {time.monotonic() - started:.0f} s")
        ui = f"127.0.0.1:{free_port()}"
        server = subprocess.Popen(
            [BINARY, "serve"], stderr=subprocess.DEVNULL,
            env=dict(os.environ, DATABASE_URL=url, UI_ADDR=ui, LOG_FORMAT="json",
                     LISTEN_ADDR=f"127.0.0.1:{free_port()}"))
        page = f"http://{ui}"
        for _ in range(100):
            try:
                socket.create_connection(ui.split(":"), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)

        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,900"):
            options.add_argument(flag)
        browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            browser.get(page + "/")  # warm: assets cached, connections pooled
            measure(browser, "history, newest 50", lambda: browser.get(page + "/"))
            measure(browser, "history, RUNNING from groq",
                    lambda: browser.get(page + "/?states=RUNNING&provider=groq"))
            browser.get(page + "/")
            for _ in range(20):
                browser.find_element(By.CSS_SELECTOR, "a[rel=next]").click()
            deep = browser.current_url
            measure(browser, "history, 21st page (Older x20)", lambda: browser.get(deep))
            measure(browser, "batch detail", lambda: browser.get(page + "/batches/seed-0000500"))
            measure(browser, f"stats over all {rows:,}", lambda: browser.get(page + "/stats"))
        finally:
            browser.quit()
    finally:
        if server:
            server.terminate()
            server.wait(timeout=15)
        psql(admin, "-c", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


if __name__ == "__main__":
    main()

"""Drives the developer portal in headless Chromium through WebDriver (selenium and Debian's
chromedriver), as a developer and a tenant admin would click through it:

  developer: log in, search the catalog, open the service, create an app and a key, request
             a subscription, try the key (refused: pending)
  admin:     log in, approve the request in the queue, read the audit log
  both:      the key works through the edge within a second of the approval, through
             try-it and over plain HTTP; the service's usage page counts the calls

Every page is saved as a screenshot in --shots. Prints one JSON line at the end:
{"key": ..., "approved_to_served_ms": ..., "try_status": ...}. Exits non-zero (with the
page's text) on any failed check.

Usage: portal_browser.py --portal URL --gateway URL --developer-token T --admin-token T
       --tenant T --service S --app A --shots DIR
"""

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.support.ui import Select, WebDriverWait


def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for a in [
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1400",
        "--no-first-run",
        "--disable-extensions",
    ]:
        opts.add_argument(a)
    # Debian's driver, so selenium-manager never tries to download one.
    service = Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    d = webdriver.Chrome(options=opts, service=service)
    d.set_page_load_timeout(20)
    return d


class Run:
    def __init__(self, args):
        self.a = args
        self.d = browser()
        self.shot_no = 0
        # Requests this run sent to the service through the edge (try-it and direct).
        self.calls = 0

    def shot(self, name):
        self.shot_no += 1
        path = os.path.join(self.a.shots, f"{self.shot_no:02d}-{name}.png")
        self.d.save_screenshot(path)

    def fail(self, why):
        body = self.d.find_element(By.TAG_NAME, "body").text
        raise SystemExit(f"FAILED: {why}\n--- page {self.d.current_url} ---\n{body}")

    def check(self, ok, why):
        if not ok:
            self.fail(why)

    def go(self, path):
        self.d.get(self.a.portal + path)

    def css(self, selector):
        return self.d.find_element(By.CSS_SELECTOR, selector)

    def click(self, selector):
        """Clicks a form's button and waits (bounded) for the page it leads to."""
        self.follow(self.css(selector))

    def follow(self, element):
        """Clicks `element` and waits (bounded) until the next page has loaded."""
        old = self.d.find_element(By.TAG_NAME, "html")
        element.click()

        def replaced(d):
            try:
                old.is_enabled()
                return False
            except WebDriverException:  # stale, or no longer in the document
                return d.execute_script("return document.readyState") == "complete"

        WebDriverWait(self.d, 20).until(replaced)

    def title(self):
        return self.css("main h1").text

    def login(self, token, who):
        self.go("/portal/login")
        self.check("Log in" in self.title(), "the login page")
        self.shot(f"login-{who}")
        self.css("input[name=token]").send_keys(token)
        self.click("form[action='/portal/login'] button")
        self.check(self.title() == "Catalog", f"{who} lands on the catalog")

    def logout(self):
        self.click("form[action='/portal/logout'] button")
        self.check("Log in" in self.title(), "logged out")

    def try_it(self, key):
        self.calls += 1
        self.css("#try-key").send_keys(key)
        self.click("#try-send")
        return int(self.css("#try-status").text)

    def developer(self):
        a = self.a
        self.login(a.developer_token, "developer")
        box = self.css("input[name=q]")
        box.send_keys(a.service)
        self.click("form[action='/portal'] button")
        rows = self.d.find_elements(By.CSS_SELECTOR, "#catalog a")
        self.check([r.text for r in rows] == [a.service], f"the search finds {a.service} alone")
        self.shot("catalog")
        self.follow(rows[0])
        self.check(self.title() == a.service, "the service page")
        self.check(len(self.d.find_elements(By.CSS_SELECTOR, ".operation")) > 0, "the docs")
        self.shot("service")

        self.go("/portal/apps")
        self.css("#new-app input[name=name]").send_keys(a.app)
        self.css("#new-app input[name=description]").send_keys("the browser test's app")
        self.click("#new-app button")
        self.check(self.d.find_elements(By.ID, f"app-{a.app}"), "the app is listed")
        self.shot("apps")
        self.click(f"#app-{a.app} form[action$='/keys'] button")
        key = self.css("#new-key").text.strip()
        self.check(key.startswith("tgk_"), f"a key is shown once: {key!r}")
        self.shot("new-key")

        self.go(f"/portal/services/{a.tenant}/{a.service}")
        Select(self.css("#subscribe select[name=app]")).select_by_value(a.app)
        self.click("#subscribe button")
        subs = [s.text for s in self.d.find_elements(By.CSS_SELECTOR, "#subscribe .subscription")]
        self.check(any(a.app in s and "pending" in s for s in subs), f"pending: {subs}")
        self.shot("subscription-pending")
        status = self.try_it(key)
        self.check(status == 403, f"try-it before approval answers 403, not {status}")
        self.shot("try-it-pending")
        self.logout()
        return key

    def admin(self):
        a = self.a
        self.login(a.admin_token, "admin")
        self.go("/portal/approvals")
        rows = self.d.find_elements(By.CSS_SELECTOR, "#pending tr")
        self.check(any(a.app in r.text and a.service in r.text for r in rows), "the request waits")
        self.shot("approvals")
        self.click(f"#pending form[action$='{a.app}%3A{a.service}/approve'] button")
        approved = time.monotonic()
        self.check(not self.d.find_elements(By.ID, "pending"), "the queue is empty after approval")
        return approved

    def served_after(self, key, approved):
        """Polls the edge with the key (bounded at 1 s from the approval); the ms it took."""
        while True:
            req = urllib.request.Request(
                self.a.gateway + self.a.path, headers={"apikey": key}
            )
            self.calls += 1
            try:
                with urllib.request.urlopen(req, timeout=2) as r:
                    if r.status == 200:
                        return round((time.monotonic() - approved) * 1000)
            except urllib.error.HTTPError:
                pass
            if time.monotonic() - approved > 1.0:
                raise SystemExit("FAILED: the key was not admitted within 1 s of approval")
            time.sleep(0.02)

    def audit(self):
        self.go("/portal/audit")
        text = self.css("#audit").text
        self.check("approve" in text.lower() or "subscription" in text.lower(), "the approval is audited")
        self.shot("audit")
        self.logout()

    def try_with(self, key):
        a = self.a
        self.login(a.developer_token, "developer-again")
        self.go(f"/portal/services/{a.tenant}/{a.service}")
        subs = [s.text for s in self.d.find_elements(By.CSS_SELECTOR, "#subscribe .subscription")]
        self.check(any(a.app in s and "approved" in s for s in subs), f"approved: {subs}")
        path = self.css("#try-path")
        path.clear()
        path.send_keys(a.path)
        status = self.try_it(key)
        self.check(status == 200, f"try-it answers 200, not {status}")
        answer = self.css("#try-answer-body").text
        self.check(key not in answer, "the answer does not echo the key back to the page")
        self.check("$KEY" in self.css("#try-curl").text, "the curl line names $KEY, not the key")
        self.shot("try-it")
        return status

    def usage(self):
        """The service's usage page, once the edge's rollups counted every call of this run."""
        a = self.a
        deadline = time.monotonic() + 10
        while True:
            self.go(f"/portal/usage?tenant={a.tenant}&service={a.service}&range=1h")
            cells = [c.text for c in self.d.find_elements(By.CSS_SELECTOR, "#usage-total td")]
            self.check(len(cells) == 7, f"the totals row: {cells}")
            requests, errors = int(cells[0]), int(cells[1].split()[0])
            if requests == self.calls and errors >= 1:
                break
            if time.monotonic() > deadline:
                self.fail(f"the usage page never counted the {self.calls} calls: {cells}")
            time.sleep(0.5)
        bars = self.d.find_elements(By.CSS_SELECTOR, "#chart-requests rect title")
        self.check(len(bars) >= 2, f"bars for the 2xx and the 4xx: {len(bars)}")
        self.check(self.d.find_elements(By.CSS_SELECTOR, "#chart-latency polyline"), "latency lines")
        self.shot("usage")
        return requests


def main():
    p = argparse.ArgumentParser()
    for f in ["portal", "gateway", "developer-token", "admin-token", "tenant", "service", "app", "path", "shots"]:
        p.add_argument(f"--{f}", required=True)
    args = p.parse_args()
    os.makedirs(args.shots, exist_ok=True)
    run = Run(args)
    try:
        key = run.developer()
        approved = run.admin()
        ms = run.served_after(key, approved)
        run.audit()
        status = run.try_with(key)
        requests = run.usage()
        print(json.dumps({"key": key, "approved_to_served_ms": ms, "try_status": status, "usage_requests": requests}))
    finally:
        run.d.quit()


if __name__ == "__main__":
    sys.exit(main())

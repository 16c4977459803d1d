"""Take docs/review-app.png: the review app of a search run, in headless Chromium (Debian's chromium + chromium-driver).

    python docs/screenshot.py RUN_DIR docs/review-app.png [--grades 3,s,left,left]

The first candidates are graded with the given keys (as a reviewer would) before the picture is taken;
the labels go to a temporary file, never to the run.
"""

import argparse
import pathlib
import shutil
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys

from lensdask.review.app import serve


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("out")
    p.add_argument("--grades", default="3,s,left,left",
                   help="keys pressed before the picture (comma-separated; left, right: the arrows)")
    p.add_argument("--size", default="1180,760")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        server = serve(a.run_dir, labels=pathlib.Path(tmp) / "labels.csv", top=50, port=0, labeller="reviewer").start()
        opts = webdriver.ChromeOptions()
        opts.binary_location = shutil.which("chromium")
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={a.size}",
                    "--hide-scrollbars"):
            opts.add_argument(arg)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
        try:
            driver.get(server.url)
            time.sleep(1.5)
            for key in filter(None, a.grades.split(",")):
                key = {"left": Keys.ARROW_LEFT, "right": Keys.ARROW_RIGHT}.get(key, key)
                ActionChains(driver).send_keys(key).perform()
                time.sleep(0.2)
            ActionChains(driver).send_keys("?").perform()
            time.sleep(1.0)
            driver.save_screenshot(a.out)
        finally:
            driver.quit()
            server.stop()
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

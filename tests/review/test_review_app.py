"""The review app (``lensdask review RUN --serve``) and the static page, driven in headless Chromium.

Browser tests need Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package
(``.ci/run`` installs them); without them they skip, saying why.
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import threading
import time

import numpy as np
import pandas as pd
import pytest

from lensdask.errors import LensdaskError
from lensdask.review.app import ReviewServer, ReviewState
from lensdask.review.labels import read_labels
from lensdask.store import create_store

from conftest import GALAXY_TILES as TILES


@pytest.fixture(scope="module")
def run(galaxy_run):
    """A survey store of 60 noisy galaxies and a search run over it (every row a candidate)."""
    return galaxy_run("app", per_tile=30, seed=8, first_id=7000)


def _request(port, method, path, body=None, headers=None, host=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest(method, path, skip_host=True)
    conn.putheader("Host", host or f"127.0.0.1:{port}")
    for k, v in (headers or {}).items():
        conn.putheader(k, v)
    data = json.dumps(body).encode() if body is not None else b""
    conn.putheader("Content-Length", str(len(data)))
    conn.endheaders(data)
    r = conn.getresponse()
    out = r.status, r.read()
    conn.close()
    return out


def test_app_serves_page_pictures_and_grades(run, tmp_path):
    state = ReviewState(run / "run", tmp_path / "labels.csv", top=10, labeller="ann")
    with ReviewServer(state, port=0) as server:
        port = server.port
        import psutil

        listening = [
            c.laddr.ip
            for c in psutil.Process().net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port
        ]
        assert listening == ["127.0.0.1"]  # loopback only
        status, page = _request(port, "GET", "/")
        text = page.decode()
        assert status == 200 and text.count('data-view="colour"') == 10 and 'data-view="difference"' in text
        summary = json.loads((run / "run" / "summary.json").read_text())
        assert f"model {summary['model_id']}" in text and f"threshold p ≥ {summary['threshold']}" in text
        assert f"{summary['candidates']} candidates" in text and "showing the best 10" in text
        assert "run <b>run</b>" in text and "p = " in text
        status, png = _request(port, "GET", "/img/0/colour.png")
        assert status == 200 and png[:4] == b"\x89PNG"
        assert _request(port, "GET", "/img/10/colour.png")[0] == 404  # no such candidate
        # nothing outside the run: not the run's files, not the labels, not the file system
        for path in (
            "/../summary.json",
            "/img/..%2F..%2Fsummary.json",
            "/%2e%2e/labels.csv",
            "/summary.json",
            "/candidates.parquet",
            "/etc/passwd",
            "//etc/passwd",
        ):
            status, body = _request(port, "GET", path)
            assert status in (403, 404) and b"store" not in body, path
        token = {"X-Lensdask-Token": state.token, "Content-Type": "application/json"}
        grade = {"index": 1, "class": "lens", "grade": "probable", "labeller": "ann"}
        assert _request(port, "POST", "/api/grade", grade)[0] == 403  # no token: refused
        assert _request(port, "POST", "/api/grade", grade, token, host="evil.example:80")[0] == 403
        assert _request(port, "POST", "/api/grade", grade | {"grade": "no"}, token)[0] == 400  # contradiction
        assert _request(port, "POST", "/api/grade", grade | {"labeller": "<b>x"}, token)[0] == 400
        status, body = _request(port, "POST", "/api/grade", grade, token)
        assert status == 200 and json.loads(body)["class"] == "lens"
        status, body = _request(port, "GET", "/api/grades?labeller=ann", headers=token)
        key = f"{state.cand.iloc[1]['tile']}/{int(state.cand.iloc[1]['object_id'])}"
        assert json.loads(body)["grades"][key]["grade"] == "probable"
        # two reviewers grading the same candidate at the same moment: both grades are kept
        barrier = threading.Barrier(8)

        def post(who):
            barrier.wait()
            return _request(
                port, "POST", "/api/grade", {"index": 2, "class": "ring", "grade": "no", "labeller": who}, token
            )[0]

        threads = [threading.Thread(target=post, args=(f"rev{k}",)) for k in range(8)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    labels = read_labels(tmp_path / "labels.csv")
    assert len(labels) == 9 and sorted(labels["labeller"])[1:] == [f"rev{k}" for k in range(8)]


def test_port_in_use_and_no_candidates_are_clear_errors(run, tmp_path, capsys):
    from lensdask.cli import main

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        state = ReviewState(run / "run", tmp_path / "labels.csv", top=3)
        with pytest.raises(LensdaskError, match=f"port {port} .*in use"):
            ReviewServer(state, port=port)
        assert main(["review", str(run / "run"), "--serve", "--port", str(port)]) == 2
        assert f"port {port}" in capsys.readouterr().err
        assert main(["review", str(run / "run"), "--serve", "--port", "70000"]) == 2
        assert "--port" in capsys.readouterr().err
    finally:
        busy.close()
    empty = tmp_path / "empty-run"
    empty.mkdir()
    shutil.copy(run / "run" / "summary.json", empty / "summary.json")
    pd.read_parquet(run / "run" / "candidates.parquet").iloc[0:0].to_parquet(empty / "candidates.parquet")
    assert main(["review", str(empty), "--serve", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "no candidates" in err and "nothing to review" in err
    assert not (empty / "labels.csv").exists()


# ---------------------------------------------------------------- in a real browser


def _browser(download_dir=None):
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("headless Chromium not found: apt-get install chromium chromium-driver (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--disable-gpu",
        "--allow-file-access-from-files",
    ):
        opts.add_argument(arg)
    if download_dir is not None:
        opts.add_experimental_option(
            "prefs", {"download.default_directory": str(download_dir), "download.prompt_for_download": False}
        )
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    if download_dir is not None:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    return driver


def _press(driver, *keys):
    from selenium.webdriver.common.action_chains import ActionChains

    for k in keys:
        ActionChains(driver).send_keys(k).perform()


def _wait(predicate, timeout=15.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _card_grades(driver):
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('.card .grade')).map(b => [b.dataset.grade, b.dataset.cls]);"
    )


@pytest.mark.slow
def test_browser_grades_from_the_keyboard_into_the_labels(run, tmp_path):
    from selenium.webdriver.common.keys import Keys

    from lensdask.review.trainset import trainset_add

    labels = tmp_path / "labels.csv"
    state = ReviewState(run / "run", labels, top=50, labeller="ann")
    driver = _browser()
    try:
        with ReviewServer(state, port=0) as server:
            driver.get(server.url)
            _wait(lambda: "candidate 1 of 50" in driver.find_element("id", "progress").text, what="the page")
            assert len(driver.find_elements("css selector", 'img[data-view="colour"]')) == 50
            assert driver.execute_script("return document.querySelector('img[data-view=colour]').naturalWidth") == 45
            # 3 = definite lens (moves on), → skips one, s = spiral, 0 = not a lens
            _press(driver, "3", Keys.ARROW_RIGHT, "s", "0")
            _wait(lambda: len(read_labels(labels)) == 3, what="three rows in the labels table")
            got = read_labels(labels)
            want = state.cand.iloc[[0, 2, 3]]
            assert got["object_id"].tolist() == want["object_id"].astype(int).tolist()
            assert got["class"].tolist() == ["lens", "spiral", "non-lens"]
            assert got["grade"].tolist() == ["definite", "no", "no"] and (got["labeller"] == "ann").all()
            driver.refresh()
            _wait(lambda: "graded 3 / 50" in driver.find_element("id", "progress").text, what="grades after reload")
            grades = _card_grades(driver)
            assert grades[:5] == [["definite", "lens"], ["", ""], ["no", "spiral"], ["no", "non-lens"], ["", ""]]
            # fifty candidates without the mouse: grade every one, from the first
            _press(driver, *(["3", "0"] * 25))
            _wait(lambda: len(read_labels(labels)) == 53, what="fifty more grades")
            _wait(lambda: "graded 50 / 50" in driver.find_element("id", "progress").text, what="progress")
    finally:
        driver.quit()
    # the labels feed `trainset add` unchanged: candidate 2 (spiral, then lens) is a conflict and is left out;
    # 0 (lens twice) and 3 (non-lens twice) agree with themselves
    train = create_store(
        tmp_path / "train.zarr", tiles=["sim-0"], capacity=64, bands="griz", pixel_scale=0.263, stamp=45
    )
    added = trainset_add(labels, run / "des.zarr", tmp_path / "train.zarr")
    assert len(added) == 49 and set(added["class"]) == {"lens", "non-lens"}
    assert int(state.cand.iloc[2]["object_id"]) not in set(added["object_id"])
    assert train is not None


@pytest.mark.slow
def test_browser_static_page_csv_export(run, tmp_path):
    from selenium.webdriver.common.keys import Keys

    from lensdask.cli import main
    from lensdask.review.gallery import gallery_html

    g = gallery_html(run / "run", top=12, per_page=12, out=tmp_path / "g")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = _browser(downloads)
    try:
        driver.get(g.index.as_uri())
        driver.execute_script("localStorage.setItem('lensdask:labeller', 'carol');")
        driver.refresh()
        _wait(lambda: "candidate 1 of 12" in driver.find_element("id", "progress").text, what="the page")
        _press(driver, "2", Keys.ARROW_RIGHT, "r", "0")
        _wait(lambda: "graded 3 / 12" in driver.find_element("id", "progress").text, what="three grades")
        driver.refresh()  # kept in the browser
        _wait(lambda: "graded 3 / 12" in driver.find_element("id", "progress").text, what="grades after reload")
        assert _card_grades(driver)[:4] == [["probable", "lens"], ["", ""], ["no", "ring"], ["no", "non-lens"]]
        driver.find_element("id", "export").click()
        csv = _wait(lambda: next((p for p in downloads.glob("*.csv")), None), what="the CSV download")
        _wait(lambda: csv.stat().st_size > 0, what="the CSV written")
    finally:
        driver.quit()
    labels = tmp_path / "labels.csv"
    assert main(["label", "--labels", str(labels), "--from-csv", str(csv), "--zarr", str(run / "des.zarr")]) == 0
    got = read_labels(labels)
    assert got["class"].tolist() == ["lens", "ring", "non-lens"] and (got["labeller"] == "carol").all()
    assert got["grade"].tolist() == ["probable", "no", "no"]
    assert got["object_id"].tolist() == g.candidates.iloc[[0, 2, 3]]["object_id"].astype(int).tolist()


def test_page_names_known_lenses_and_escapes_every_name(run, tmp_path):
    from lensdask.review.gallery import gallery_html

    cand = pd.read_parquet(run / "run" / "candidates.parquet").sort_values("score", ascending=False).head(3)
    cand = cand.reset_index(drop=True).assign(
        known_name=["DESJ0331-3041<script>", None, None],
        known_grading=["confident", None, None],
        known_sep_arcsec=[0.4, np.nan, np.nan],
    )
    g = gallery_html(run / "run", top=3, out=tmp_path / "g", candidates=cand, title="<i>t</i>")
    text = g.index.read_text()
    assert "known lens: DESJ0331-3041&lt;script&gt;, grade confident, 0.4″ away" in text
    assert "<script>," not in text and "&lt;i&gt;t&lt;/i&gt;" in text
    assert text.count('data-view="colour"') == 3 and text.count('data-view="residual"') == 3
    assert text.count('data-view="band-g"') == 3 and "true colour irg · bar 2″" in text


def test_label_grade_and_votes_through_the_cli(tmp_path, capsys):
    from lensdask.cli import main

    labels, out = tmp_path / "labels.csv", tmp_path / "votes.csv"
    for who, grade in (("ann", "definite"), ("bob", "possible"), ("cat", "probable")):
        assert (
            main(
                [
                    "label",
                    "--labels",
                    str(labels),
                    "--tile",
                    TILES[0],
                    "--object-id",
                    "7001",
                    "--class",
                    "lens",
                    "--grade",
                    grade,
                    "--labeller",
                    who,
                ]
            )
            == 0
        )
    assert (
        main(
            [
                "label",
                "--labels",
                str(labels),
                "--tile",
                TILES[0],
                "--object-id",
                "7002",
                "--class",
                "lens",
                "--grade",
                "no",
            ]
        )
        == 2
    )
    assert "contradicts" in capsys.readouterr().err
    assert main(["label", "--labels", str(labels), "--votes", str(out)]) == 0
    assert "1 objects graded (1 by several reviewers)" in capsys.readouterr().out
    v = pd.read_csv(out)
    counts = v.loc[0, ["n_reviewers", "n_definite", "n_probable", "n_possible", "mean_grade"]].tolist()
    assert counts == [3, 1, 1, 1, 2.0]
    assert v.loc[0, "labellers"] == "ann bob cat"

"""`xfer ui` in a real browser (Debian's Chromium, driven by Selenium through chromedriver),
after real demo runs: the runs page, a run's DAG with its ten steps, the Trainer's curves,
the blessing report and the model card, two runs compared, a run followed live from
running to complete, a failed step's error, file URLs that try to leave an artifact, and a
class named like an HTML tag, which must show as text and run nothing anywhere.

`make browser` (a prerequisite of `make test`) installs chromium and chromium-driver.
Set XFER_UI_SCREENSHOT=PATH to keep the run page's screenshot (docs/img/run-page.png).
"""
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from conftest import XFER, xfer

pytestmark = [pytest.mark.integration]

CHROMEDRIVER = "/usr/bin/chromedriver"
XSS = "<img src=x onerror=alert(1)>"
STEPS = ["ImportExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "DataCheck", "Transform",
         "Trainer", "ServedBaseline", "Evaluator", "Pusher"]
# The demo, small: no fine-tuning, thresholds any model passes (blessed, pushed, a card).
SMALL = ["train.fine_tune.enabled=false", "eval.min_accuracy=0.0", "eval.max_drop=1.0"]


def run_ids(root) -> list[str]:
    from xfer.pipeline.store import open_store, pipeline_runs
    return [r.name for r in pipeline_runs(open_store(str(root / "metadata.sqlite")), "xfer-demo")]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui-demo")
    labels = root / "labels.txt"
    labels.write_text("\n".join(["zero", XSS, *[f"digit {i}" for i in range(2, 10)]]) + "\n")
    args = ["--config", "demo", "--set", f"root={root}", "--set", f"data.labels_file={labels}"]
    for s in SMALL:
        args += ["--set", s]
    xfer("run", *args)
    yield {"root": root, "args": args, "first": run_ids(root)[-1]}
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def server(demo):
    proc = subprocess.Popen([XFER, "ui", *demo["args"], "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    assert match, f"xfer ui printed {line!r}"
    yield f"http://127.0.0.1:{match.group(1)}"
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not os.path.exists(CHROMEDRIVER):
        pytest.skip(f"{CHROMEDRIVER} missing: `make browser` installs chromium and chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


def wait_for(driver, check, seconds=60, what=""):
    """`check` until true; the live part of a page is swapped while we look, so an element
    gone stale is looked up again on the next try."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, seconds, poll_frequency=0.5, ignored_exceptions=[StaleElementReferenceException]
                         ).until(lambda d: check(d), message=what)


def css(driver, selector):
    from selenium.webdriver.common.by import By
    return driver.find_elements(By.CSS_SELECTOR, selector)


def run_url(server, run_id, tail=""):
    return f"{server}/run/{urllib.parse.quote(run_id, safe='')}{tail}"


def assert_xss_is_text(driver):
    """The hostile class name is on the page as text, made no element, raised no alert."""
    from selenium.common.exceptions import NoAlertPresentException
    assert XSS in driver.find_element("tag name", "body").text
    assert not css(driver, 'img[src="x"]'), "the class name became an <img> element"
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text


@pytest.mark.timeout(900)
def test_runs_page_lists_the_run(demo, server, browser):
    browser.get(server + "/")
    row = wait_for(browser, lambda d: css(d, f'tr.run[data-run="{demo["first"]}"]'), what="the run's row")[0]
    assert "complete" in row.text and "blessed" in row.text
    browser.get(server + "/?status=failed")
    assert not css(browser, f'tr.run[data-run="{demo["first"]}"]')


@pytest.mark.timeout(180)
def test_run_page_draws_ten_steps_with_their_states(demo, server, browser, tmp_path):
    browser.get(run_url(server, demo["first"]))
    nodes = css(browser, "svg#dag a.node")
    assert [n.get_attribute("data-step") for n in nodes] == STEPS
    assert {n.get_attribute("data-state") for n in nodes} == {"executed"}
    rows = css(browser, "table#steps tr.step")
    assert len(rows) == 10 and all("executed" in r.text for r in rows)
    assert "pipeline_root/Trainer/model_run" in browser.find_element("id", "tensorboard").text
    shot = tmp_path / "run-page.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("XFER_UI_SCREENSHOT"):
        shutil.copy(shot, os.environ["XFER_UI_SCREENSHOT"])


@pytest.mark.timeout(180)
def test_trainer_curves_image_loads(demo, server, browser):
    browser.get(run_url(server, demo["first"]))
    css(browser, 'svg#dag a.node[data-step="Trainer"]')[0].click()
    wait_for(browser, lambda d: "Trainer" in d.title, what="the Trainer's page")
    image = wait_for(browser, lambda d: css(d, 'img[data-file="curves.png"]'), what="the curves")[0]
    assert wait_for(browser, lambda d: d.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth", image) > 0, what="curves.png loaded")
    assert "ModelRun" in browser.find_element("id", "artifacts").text
    assert_xss_is_text(browser)  # the classes line of the epochs


@pytest.mark.timeout(180)
def test_blessing_report_and_model_card_open(demo, server, browser):
    browser.get(run_url(server, demo["first"]))
    browser.find_element("link text", "blessing report").click()
    wait_for(browser, lambda d: css(d, "table.recall"), what="the recall table")
    assert "BLESSED" in browser.find_element("tag name", "body").text
    names = [c.text for c in css(browser, "td.class-name")]
    assert XSS in names and "zero" in names
    assert_xss_is_text(browser)
    browser.get(run_url(server, demo["first"]))
    browser.find_element("link text", "model card").click()
    frame = wait_for(browser, lambda d: css(d, "iframe.card"), what="the model card")[0]
    browser.switch_to.frame(frame)
    try:
        assert "Model card" in browser.find_element("tag name", "h1").text
        assert_xss_is_text(browser)
    finally:
        browser.switch_to.default_content()


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.timeout(180)
def test_file_urls_that_leave_an_artifact_get_404(demo, server, browser):
    browser.get(run_url(server, demo["first"], "/step/Trainer"))
    src = css(browser, 'img[data-file="curves.png"]')[0].get_attribute("src")
    base = src.rsplit("/", 1)[0]
    assert status_of(src) == 200
    model_run = next(p for p in (demo["root"] / "pipeline_root" / "Trainer" / "model_run").iterdir())
    (model_run / "out.txt").symlink_to("/etc/passwd")
    for tail in ("..%2f..%2f..%2f..%2fmetadata.sqlite", "..%252f..%252fmetadata.sqlite", "%2Fetc%2Fpasswd",
                 "/etc/passwd", "out.txt", "logs/..%2f..%2f..%2flabels.txt", "nothing.png"):
        assert status_of(f"{base}/{tail}") == 404, tail
    assert status_of(f"{server}/files/999999/curves.png") == 404
    browser.get(f"{base}/..%2f..%2f..%2f..%2flabels.txt")
    assert "404" in browser.title


@pytest.mark.timeout(600)
def test_a_run_started_while_the_page_is_open_goes_from_running_to_complete(demo, server, browser):
    browser.get(server + "/")
    browser.execute_script("window.notReloaded = true")
    before = set(run_ids(demo["root"]))
    proc = subprocess.Popen([XFER, "run", *demo["args"]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        second = wait_for(browser, lambda d: [r.get_attribute("data-run") for r in css(d, "tr.run")
                                              if r.get_attribute("data-run") not in before and "running" in r.text],
                          240, "the new run, running")[0]
        assert browser.execute_script("return window.notReloaded") is True
        demo["second"] = second
        browser.get(run_url(server, second))
        browser.execute_script("window.notReloaded = true")
        assert wait_for(browser, lambda d: d.find_element("id", "run-status").text) == "running"
        wait_for(browser, lambda d: d.find_element("id", "run-status").text == "complete", 300, "complete")
        assert browser.execute_script("return window.notReloaded") is True
        states = {n.get_attribute("data-step"): n.get_attribute("data-state") for n in css(browser, "svg#dag a.node")}
        assert states["Trainer"] == "cached" and states["Evaluator"] == "executed", states
    finally:
        out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]


@pytest.mark.timeout(180)
def test_compare_shows_two_runs_side_by_side(demo, server, browser):
    if "second" not in demo:
        pytest.skip("the live test made no second run")
    browser.get(f"{server}/compare?" + urllib.parse.urlencode({"a": demo["first"], "b": demo["second"]}))
    header = browser.find_element("id", "compare-runs").text
    assert demo["first"] in header and demo["second"] in header
    steps = {r.find_elements("tag name", "td")[0].text: r.text for r in css(browser, "#compare-steps tr")[1:]}
    assert "executed" in steps["Trainer"] and "cached" in steps["Trainer"]
    assert XSS in browser.find_element("id", "compare-recall").text
    assert_xss_is_text(browser)


@pytest.mark.timeout(600)
def test_a_failed_step_shows_its_error_line(demo, server, browser):
    failed = xfer("run", *demo["args"], "--set", "model.weights=/nonexistent/weights.h5", check=False)
    assert failed.returncode != 0
    run_id = run_ids(demo["root"])[-1]
    browser.get(run_url(server, run_id))
    assert browser.find_element("id", "run-status").text == "failed"
    row = css(browser, 'table#steps tr.step[data-step="Trainer"]')[0]
    assert "failed" in row.text
    error = row.find_element("class name", "error").text
    assert "weights" in error, error
    row.find_element("link text", "Trainer").click()
    assert error in wait_for(browser, lambda d: css(d, "#step-error"), what="the error")[0].text


@pytest.mark.timeout(300)
def test_notebook_views_render_the_same_run(demo, browser, tmp_path):
    """`from xfer import views` in a notebook: the HTML Jupyter shows, opened in the browser."""
    code = ("import sys; from xfer import views; run, overrides = sys.argv[1], sys.argv[2:]; "
            "sys.stdout.write(views.run(run, config='demo', overrides=overrides)._repr_html_() + "
            "views.step(run, 'Trainer', config='demo', overrides=overrides)._repr_html_())")
    overrides = [a for a in demo["args"][2:] if a != "--set"]
    html = subprocess.run([sys.executable, "-c", code, demo["first"], *overrides], capture_output=True, text=True,
                          check=True).stdout
    page = tmp_path / "notebook.html"
    page.write_text(f"<!DOCTYPE html><html><body>{html}</body></html>")
    browser.get(page.as_uri())
    assert len(css(browser, "svg#dag a.node")) >= 10
    image = css(browser, 'img[data-file="curves.png"]')[0]
    assert image.get_attribute("src").startswith("data:image/png;base64,")
    assert browser.execute_script("return arguments[0].naturalWidth", image) > 0
    assert_xss_is_text(browser)

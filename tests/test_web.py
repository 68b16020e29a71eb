"""The web page in a real headless browser (Debian's chromium + chromedriver, driven by selenium):
choose a user, see explanations, dislike and like and watch the list change, type interests in Chinese.

Needs /usr/bin/chromium and /usr/bin/chromedriver (apt-get install chromium chromium-driver). Missing, the
test fails, unless LLMREC_SKIP_BROWSER=1 is set (for a laptop without them)."""

import os
import shutil
import tempfile
import threading
import time

import pytest
from servicekit import TextKNN, dataset, free_port, wait_healthy

from llmrec import service
from llmrec.server import create_app

pytestmark = pytest.mark.browser
KEY = "web-test-key"
CHROMIUM = os.environ.get("LLMREC_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("LLMREC_CHROMEDRIVER", "/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn
    engine = service.open_engine(TextKNN().fit(dataset(), progress=False),
                                 tmp_path_factory.mktemp("web-state"), source="topics")
    port = free_port()
    app = create_app(engine, api_key=KEY, allowed_hosts=["127.0.0.1"])
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url)
    yield url, engine
    srv.should_exit = True
    t.join(10)
    engine.store.close()


@pytest.fixture(scope="module")
def browser():
    if os.environ.get("LLMREC_SKIP_BROWSER") == "1":
        pytest.skip("LLMREC_SKIP_BROWSER=1")
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        pytest.fail(f"browser test needs {' and '.join(missing)}: apt-get install chromium chromium-driver "
                    "(or set LLMREC_SKIP_BROWSER=1 to skip it locally)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="llmrec-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1200,900"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait(cond, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            v = cond()
            if v:
                return v
        except Exception:  # the DOM is being rewritten under us
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def results(driver) -> list[str]:
    items = driver.find_elements("css selector", "#results li[data-item]")
    return [li.get_attribute("data-item") for li in items]


def ready(driver) -> bool:
    return driver.find_element("tag name", "body").get_attribute("data-state") == "ready"


def test_page_feedback_loop_and_chinese_interests(server, browser):
    url, engine = server
    d = browser
    d.get(url + "/")
    # user data needs the key: the page asks for it, and lists the users once it is given
    wait(lambda: ready(d) and "API key" in d.find_element("id", "keyhint").text, what="the page to ask for the key")
    assert not results(d) and d.find_element("id", "keybox").is_displayed()
    key = d.find_element("id", "key")
    key.send_keys(KEY)
    d.execute_script("arguments[0].dispatchEvent(new Event('change'))", key)
    wait(lambda: ready(d) and results(d), what="first recommendations")
    user = d.find_element("id", "user").get_attribute("value")
    assert user == engine.user_ids(1)[0]
    first = results(d)
    assert len(first) == 10
    assert d.find_elements("css selector", "#results li .why"), "explanations shown"
    assert "writes key" in d.find_element("id", "status").text

    # dislike the top item: it leaves the list and shows up as disliked
    top = first[0]
    d.find_element("css selector", f'#results li[data-item="{top}"] button.dislike').click()
    wait(lambda: ready(d) and results(d) and top not in results(d), what="the disliked item to go")
    assert top in {x["item_id"] for x in engine.history(user)["disliked"]}
    title = engine.item(top)["title"]
    wait(lambda: title in d.find_element("id", "disliked").text, what="the disliked list")

    # like another: it joins the history (shown first) and leaves the recommendations
    liked = results(d)[3]
    d.find_element("css selector", f'#results li[data-item="{liked}"] button.like').click()
    wait(lambda: ready(d) and liked not in results(d), what="the liked item to move to the history")
    assert engine.history(user)["items"][-1]["item_id"] == liked
    wait(lambda: d.find_element("css selector", "#history li").text == engine.item(liked)["title"],
         what="the history panel")

    # type interests in Chinese
    box = d.find_element("id", "text")
    box.clear()
    box.send_keys("我最近喜欢看科幻电影")
    d.find_element("id", "go").click()
    wait(lambda: ready(d) and results(d) and all(i.startswith("s") for i in results(d)),
         what="sci-fi items for a Chinese query")
    titles = [e.text for e in d.find_elements("css selector", "#results li .title")]
    assert "科幻电影" in titles[0]
    assert d.find_element("id", "error").text == ""
    # feedback on a text query applies to this page's session user and changes the list
    before = results(d)
    d.find_element("css selector", f'#results li[data-item="{before[0]}"] button.dislike').click()
    wait(lambda: ready(d) and results(d) and before[0] not in results(d), what="the text list to change")

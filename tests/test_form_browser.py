"""The spec form as a learner meets it: a notebook in JupyterLab, in a real (headless) browser.

tests/test_widgets.py drives SpecEditor by setting widget values in Python. This test proves
what that cannot: that the form renders in JupyterLab 4 with ipywidgets 8, that typing in the
page reaches the kernel and the validation message and system-prompt preview update in the page,
and that the Save button writes a valid YAML file holding the edits.

It writes a one-cell notebook into a temporary folder, starts `jupyter lab` from this
environment on a free loopback port, opens the notebook in Debian's Chromium (headless, driven
by Selenium through /usr/bin/chromedriver, so Selenium never downloads a driver), runs the cell,
then: empties the persona's name (a message naming the field appears, the preview and Save are
withheld), types a new name and puts a new signature phrase first (the message turns valid and
the preview is exactly the new spec's system prompt), clicks Save and loads the file.
Skipped when Chromium, its driver, selenium or jupyterlab is missing
(`bash scripts/install.sh --dev` installs them).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
for _tool in (CHROMIUM, CHROMEDRIVER):
    if not _tool.exists():
        pytest.skip(f"{_tool} is missing (Debian's chromium and chromium-driver; "
                    "`bash scripts/install.sh --dev` installs them)", allow_module_level=True)
pytest.importorskip("selenium", reason="selenium is not installed (requirements-dev.txt)")
pytest.importorskip("jupyterlab", reason="jupyterlab is not installed (requirements-dev.txt)")
pytest.importorskip("ipywidgets", reason="ipywidgets is not installed (requirements-cpu.txt)")

import nbformat  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from persona_lib.cli import main  # noqa: E402
from persona_lib.spec import load_spec, system_prompt  # noqa: E402

TOKEN = "persona-lab-form-test"
NOTEBOOK = "spec_form.ipynb"
NEW_NAME = "Captain Deadline"
NEW_PHRASE = "one thing at a time"
# Generous for a busy 2-core machine: JupyterLab's first page load and the kernel start are the slow steps.
SERVER_START_S = 90
PAGE_S = 90
KERNEL_S = 60
UPDATE_S = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def notebook_dir(tmp_path) -> Path:
    """A folder holding the one-cell notebook that shows the editor for the shipped `taskmaster`."""
    root = tmp_path / "notebooks"
    root.mkdir()
    source = ("from persona_lib.spec import load_spec\n"
              "from persona_lib.widgets import spec_editor\n\n"
              f"ed = spec_editor(load_spec('taskmaster'), {str(tmp_path / 'saved.yaml')!r})\n"
              "ed")
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(source)],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, root / NOTEBOOK)
    return root


@pytest.fixture
def jupyter(notebook_dir, tmp_path):
    """`jupyter lab` from this environment, serving notebook_dir on a free loopback port; yields its
    base URL. Its settings, workspaces and runtime files live in tmp_path, so nothing the learner
    (or an earlier run) left in ~/.jupyter changes what the page shows."""
    state = tmp_path / "jupyter"
    settings = state / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    # No "receive Jupyter news?" toast and no update check: the machine has no network anyway.
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(state / "config"), JUPYTER_RUNTIME_DIR=str(state / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(state / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(state / "workspaces"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "jupyter.log").open("w")
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={TOKEN}",
               f"--ServerApp.root_dir={notebook_dir}",
               "--LabApp.extension_manager=readonly"]  # no extension look-ups on the network
    if os.geteuid() == 0:  # CI and this project's machines run as root, which JupyterLab refuses by default
        command.append("--allow-root")
    proc = subprocess.Popen(
        command, cwd=notebook_dir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{(tmp_path / 'jupyter.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer in {SERVER_START_S} s:\n"
                            f"{(tmp_path / 'jupyter.log').read_text()}")
            time.sleep(0.25)
        yield base
    finally:
        # The shutdown API stops the kernels it started too; the signals are for a server that hangs.
        try:
            urllib.request.urlopen(urllib.request.Request(f"{base}/api/shutdown?token={TOKEN}", method="POST"),
                                   timeout=10).close()
            proc.wait(timeout=20)
        except (urllib.error.URLError, OSError, subprocess.TimeoutExpired):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if proc.poll() is None:
                    os.killpg(proc.pid, sig)  # the server's own session: it and any kernel it left
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        pass
        log.close()


@pytest.fixture
def browser(tmp_path, monkeypatch):
    """Debian's Chromium, headless, through Debian's chromedriver; quit whatever happens."""
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not look anything up
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1400,1000"):
        options.add_argument(arg)
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(PAGE_S)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The notebook page, with waits that save a screenshot and the page's HTML when they time out."""

    def __init__(self, driver, artifacts: Path):
        self.driver = driver
        self.artifacts = artifacts

    def wait(self, condition, what: str, timeout: float = UPDATE_S):
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.2).until(condition)
        except TimeoutException:
            self.driver.save_screenshot(str(self.artifacts / "timeout.png"))
            (self.artifacts / "timeout.html").write_text(self.driver.page_source)
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; "
                                 f"screenshot and HTML in {self.artifacts}") from None

    def find(self, xpath: str, what: str, timeout: float = UPDATE_S):
        """The first element matching `xpath` once it is displayed (rendered and laid out)."""
        def shown(driver):
            found = driver.find_elements(By.XPATH, xpath)
            return found[0] if found and found[0].is_displayed() else None
        return self.wait(shown, what, timeout)

    def text_field(self, label: str, kind: str = "text"):
        """The input of the first ipywidgets Text (kind "text") or Textarea ("textarea") labelled
        `label`; the persona's fields come before the trait rows' fields of the same name."""
        tag = "input" if kind == "text" else "textarea"
        return self.find(f"(//div[contains(@class, 'widget-{kind}')][.//label[normalize-space() = '{label}']]"
                         f"//{tag})[1]", f"the {label!r} field")

    def html_widget(self, containing: str):
        return self.find(f"//div[contains(@class, 'widget-html')][contains(., {containing!r})]",
                         f"an HTML widget showing {containing!r}")

    def press(self, modifier: str, key: str) -> None:
        """A chord such as Shift+Enter, sent to whatever has the focus."""
        ActionChains(self.driver).key_down(modifier).send_keys(key).key_up(modifier).perform()


def test_spec_form_in_jupyterlab(jupyter, browser, tmp_path):
    page = Page(browser, tmp_path)
    browser.get(f"{jupyter}/lab/tree/{NOTEBOOK}?token={TOKEN}")

    # The notebook is open and its kernel is idle: run the cell as a learner would, Shift+Enter.
    # The status bar reads "No Kernel | Initializing", then "... | Unknown"/"Starting", then this; a cell run
    # before it is dropped (the toolbar's execution indicator says idle from the start, so it cannot tell).
    page.find("//div[contains(@class, 'jp-StatusBar')]//span[normalize-space() = 'Python 3 (ipykernel) | Idle']",
              "the notebook to open with an idle kernel", PAGE_S + KERNEL_S)
    page.find("//div[contains(@class, 'jp-Notebook')]//div[contains(@class, 'jp-Cell')]"
              "//div[contains(@class, 'cm-content')]", "the notebook's first cell").click()
    page.press(Keys.SHIFT, Keys.ENTER)

    # The form renders in the cell's output, valid, with the shipped spec's prompt in the preview.
    spec = load_spec("taskmaster")
    name = page.find("//div[contains(@class, 'jp-OutputArea-output')]"
                     "//div[contains(@class, 'widget-text')][.//label[normalize-space() = 'name']]//input",
                     "the form to render", KERNEL_S)
    assert name.get_property("value") == spec.name
    messages = page.html_widget("the spec is valid")
    preview = page.text_field("system prompt", "textarea")
    assert preview.get_property("value") == system_prompt(spec)
    save = page.find("//button[contains(@class, 'widget-button')][normalize-space() = 'Save YAML']",
                     "the Save button")
    assert save.is_enabled()

    # Empty the name: the message names the field, the preview waits, Save is disabled. Each is its own
    # widget update from the kernel, so each is waited for rather than read at once.
    name.click()
    page.press(Keys.CONTROL, "a")
    name.send_keys(Keys.BACKSPACE)
    page.wait(lambda d: "name: is empty" in messages.text, "the validation message naming `name`")
    assert "1 problem to fix before saving" in messages.text
    page.wait(lambda d: preview.get_property("value").startswith("(the preview appears once"),
              "the preview to wait for a valid spec")
    page.wait(lambda d: not save.is_enabled(), "Save to be disabled")

    # A new name and a new first signature phrase: valid again, and the preview is the new prompt.
    name.send_keys(NEW_NAME)
    signature = page.text_field("signature_vocabulary", "textarea")
    signature.click()
    page.press(Keys.CONTROL, Keys.HOME)
    signature.send_keys(NEW_PHRASE + Keys.ENTER)
    edited = dataclasses.replace(spec, name=NEW_NAME, signature_vocabulary=[NEW_PHRASE, *spec.signature_vocabulary])
    page.wait(lambda d: preview.get_property("value") == system_prompt(edited),
              "the preview to show the edited spec's system prompt")
    assert preview.get_property("value").startswith(f"You are {NEW_NAME},")
    assert "the spec is valid" in messages.text  # the kernel sends the message before the preview
    assert name.get_property("value") == NEW_NAME

    # Save writes a valid spec file holding both edits.
    page.wait(lambda d: save.is_enabled(), "Save to be enabled")
    save.click()
    saved = tmp_path / "saved.yaml"
    page.html_widget(f"Saved to {saved}")
    assert load_spec(saved) == edited
    assert main(["spec", "check", str(saved)]) == 0  # `persona spec check saved.yaml`, as a learner runs it

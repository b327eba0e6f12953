"""The example workflows open in a real ComfyUI in a real (headless) browser.

Starts ComfyUI from the checkout in ``$COMFYUI_PATH`` as a server process
(``main.py --cpu --listen 127.0.0.1``) with everything it writes in a
temporary base directory (custom_nodes holding a copy of this pack, models,
input, output, user; database in memory), its web frontend from the
``comfyui-frontend-package`` version that the checkout's requirements.txt
pins, and drives headless Chromium over the DevTools protocol:

- the server lists the pack's nodes (/api/object_info) and serves its
  workflows folder as templates (/api/workflow_templates);
- each workflow, fetched from the template route, is loaded with
  ``app.loadGraphData``; every node type in it is registered in the
  frontend (``LiteGraph.registered_node_types``), the graph holds every
  node of the file, and no missing-nodes dialog is shown;
- the API prompt the frontend builds from it (``app.graphToPrompt``, what
  Queue sends) equals the one tests/workflow_tools.py builds, which
  tests/test_workflows.py has the same version's backend validate: together
  the workflow is valid in that version's frontend and backend;
- the template "Look at a plan (no model needed)" is queued from the
  frontend (``app.queuePrompt``): the shipped Wan2.1 1.3B plan is loaded,
  previewed, and the picture read back from the server (/api/history,
  /api/view) has the size the pack's renderer gives that plan; the
  description reaches Preview Any;
- each template's picture (``workflows/<name>.jpg``, what the template
  browser shows) is served by the template route;
- a screenshot of the Wan2.1 T2V 1.3B workflow is taken (and written to
  docs/wan21_t2v_workflow.png when ``SPARSE_VDIT_UPDATE_SCREENSHOT=1``, as
  is each template's picture, from the real UI).

Skipped with the reason (a failure in CI, where SPARSE_VDIT_REQUIRE_COMFYUI=1) when
Chromium, aiohttp or the frontend package is
missing. The frontend is looked for in ``$SPARSE_VDIT_FRONTEND_DIR`` (a
``static`` folder, or a folder holding ``comfyui_frontend_package``), in
``~/.cache/sparse-vdit/comfyui-frontend-package/<version>`` (where .ci/run
installs it with ``pip install --target``), then as the installed package if
its version matches. torchvision and torchaudio are stubbed in the server
process the way the test harness stubs them in-process. Every wait is bounded; the server and the
browser are ended at the end (process groups started here only).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib

import pytest

import comfy_harness
import workflow_tools as wt

pytestmark = pytest.mark.comfyui

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
PACK = wt.PACK_ROOT
PACK_FOLDER = "ComfyUI-Sparse-vDiT"
SCREENSHOT = os.path.join(PACK, "docs", "wan21_t2v_workflow.png")
SCREENSHOT_WORKFLOW = "Wan2.1 T2V 1.3B with sparse attention.json"
LOOK_WORKFLOW = "Look at a plan (no model needed).json"
LOOK_PLAN = "wan2.1-1.3b_static-baseline.json"
QUEUE_TIMEOUT = 180  # s: the preview renders on the CPU in a few seconds
THUMBNAIL = (640, 360)  # px of a template picture (the template browser shows a 16:9 card)
UPDATE = os.environ.get("SPARSE_VDIT_UPDATE_SCREENSHOT") == "1"
FRONTEND_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "sparse-vdit", "comfyui-frontend-package")

SERVER_START_TIMEOUT = 240  # s: imports torch and every comfy_extras module on 2 cores
APP_READY_TIMEOUT = 180  # s: the frontend bundle and node definitions
WINDOW = (1920, 1080)

#: frontend settings for the temporary user (unknown ids are kept and ignored by older frontends)
UI_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
    "--hide-scrollbars", "--mute-audio",
]


# --------------------------------------------------------------------------
# What is needed, where it is
# --------------------------------------------------------------------------


def required_frontend_version(comfy_path: str) -> str | None:
    """The comfyui-frontend-package version pinned in a checkout's requirements.txt."""
    try:
        with open(os.path.join(comfy_path, "requirements.txt"), encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line.startswith("comfyui-frontend-package=="):
                    return line.split("==", 1)[1].strip()
    except OSError:
        return None
    return None


def _static_dir(root: str) -> str | None:
    for cand in (root, os.path.join(root, "static"), os.path.join(root, "comfyui_frontend_package", "static")):
        if os.path.isfile(os.path.join(cand, "index.html")):
            return cand
    return None


def find_frontend(version: str) -> str | None:
    """The frontend's static folder for ``version``, or None."""
    env = os.environ.get("SPARSE_VDIT_FRONTEND_DIR", "").strip()
    if env:
        for root in (os.path.join(env, version), env):
            found = _static_dir(root)
            if found:
                return found
    found = _static_dir(os.path.join(FRONTEND_CACHE, version))
    if found:
        return found
    try:
        from importlib.metadata import PackageNotFoundError, version as installed_version

        if installed_version("comfyui-frontend-package") == version:
            import comfyui_frontend_package

            return _static_dir(os.path.dirname(comfyui_frontend_package.__file__))
    except (ImportError, PackageNotFoundError):
        pass
    return None


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_get(url: str, timeout: float = 10.0) -> bytes:
    assert url.startswith("http://127.0.0.1:"), url  # only our own local server
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310
        return r.read()


def _end_process_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group we started (start_new_session), then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace)


def _tail(path: str, n: int = 60) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# --------------------------------------------------------------------------
# The ComfyUI server
# --------------------------------------------------------------------------

LAUNCHER = '''\
"""Run ComfyUI's main.py with torchvision / torchaudio stubbed where they do not
import (written by tests/test_browser.py)."""
import os, runpy, sys
tests_dir, comfy_dir = sys.argv[1], sys.argv[2]
sys.path.insert(0, tests_dir)
import comfy_harness
comfy_harness.stub_unimportable_packages()
sys.path.remove(tests_dir)
del sys.modules["comfy_harness"]
main = os.path.join(comfy_dir, "main.py")
sys.argv = [main] + sys.argv[3:]
sys.path.insert(0, comfy_dir)
runpy.run_path(main, run_name="__main__")
'''


class ComfyServer:
    def __init__(self, comfy_path: str, frontend: str, base: str):
        self.comfy_path = comfy_path
        self.frontend = frontend
        self.base = base
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = os.path.join(base, "server.log")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        custom_nodes = os.path.join(self.base, "custom_nodes")
        os.makedirs(custom_nodes, exist_ok=True)
        shutil.copytree(PACK, os.path.join(custom_nodes, PACK_FOLDER),
                        ignore=shutil.ignore_patterns(".git", "tests", "benchmarks", ".benchmarks", "__pycache__",
                                                      "*.egg-info", "docs"))
        launcher = os.path.join(self.base, "launch_comfyui.py")
        with open(launcher, "w", encoding="utf-8") as f:
            f.write(LAUNCHER)
        cmd = [sys.executable, launcher, TESTS_DIR, self.comfy_path,
               "--cpu", "--listen", "127.0.0.1", "--port", str(self.port), "--disable-auto-launch",
               "--base-directory", self.base, "--front-end-root", self.frontend,
               "--database-url", "sqlite:///:memory:", "--disable-api-nodes"]
        env = dict(os.environ)
        env.pop("COMFYUI_PATH", None)
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # write nothing into the checkout
        env["PYTHONUNBUFFERED"] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ""
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.base, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{_tail(self.log)}")
            try:
                _http_get(self.url + "/api/system_stats", timeout=2)
                return
            except (urllib.error.URLError, OSError):
                time.sleep(1.0)
        raise TimeoutError(f"ComfyUI did not answer within {SERVER_START_TIMEOUT} s:\n{_tail(self.log)}")

    def get_json(self, path: str):
        return json.loads(_http_get(self.url + path, timeout=30))

    def post_json(self, path: str, data) -> bytes:
        req = urllib.request.Request(self.url + path, data=json.dumps(data).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 (our local server)
            return r.read()

    def stop(self) -> None:
        if self.proc is not None:
            _end_process_group(self.proc)


# --------------------------------------------------------------------------
# Headless Chromium over the DevTools protocol (aiohttp websocket client)
# --------------------------------------------------------------------------


class Browser:
    """One headless Chromium with one page, driven over CDP; sync methods."""

    def __init__(self, chromium: str, profile: str):
        self.chromium = chromium
        self.profile = profile
        self.proc: subprocess.Popen | None = None
        self.loop = asyncio.new_event_loop()
        self._session = None
        self._ws = None
        self._next_id = 0
        self.console: list[str] = []

    # -- process --
    def start(self, timeout: float = 60.0) -> None:
        cmd = [self.chromium, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
               f"--window-size={WINDOW[0]},{WINDOW[1]}", "--remote-debugging-address=127.0.0.1",
               "--remote-debugging-port=0", "about:blank"]
        log = open(os.path.join(self.profile, "chromium.log"), "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + timeout
        port = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Chromium exited with {self.proc.returncode}:\n"
                                   f"{_tail(os.path.join(self.profile, 'chromium.log'))}")
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(port_file, encoding="utf-8") as f:
                    port = int(f.read().split()[0])
                break
            time.sleep(0.2)
        if port is None:
            raise TimeoutError("Chromium did not open its DevTools port")
        ws_url = None
        while time.monotonic() < deadline and ws_url is None:
            with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
                targets = json.loads(_http_get(f"http://127.0.0.1:{port}/json/list", timeout=5))
                ws_url = next((t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page"), None)
            if ws_url is None:
                time.sleep(0.2)
        if ws_url is None:
            raise TimeoutError("Chromium has no page target")
        self.loop.run_until_complete(self._connect(ws_url))
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False})

    async def _connect(self, ws_url):
        import aiohttp

        self._session = aiohttp.ClientSession()
        ws_timeout = aiohttp.ClientWSTimeout(ws_close=30) if hasattr(aiohttp, "ClientWSTimeout") else 30
        self._ws = await self._session.ws_connect(ws_url, max_msg_size=0, timeout=ws_timeout)

    async def _call(self, method, params, timeout):
        self._next_id += 1
        mid = self._next_id
        await self._ws.send_str(json.dumps({"id": mid, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"CDP {method} did not answer within {timeout} s")
            msg = await self._ws.receive(timeout=left)
            if msg.type.name != "TEXT":
                raise RuntimeError(f"CDP connection closed ({msg.type.name}) during {method}")
            data = json.loads(msg.data)
            if data.get("id") == mid:
                if "error" in data:
                    raise RuntimeError(f"CDP {method}: {data['error']}")
                return data.get("result", {})
            if data.get("method") == "Runtime.consoleAPICalled":
                args = data["params"].get("args", [])
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
            elif data.get("method") == "Runtime.exceptionThrown":
                self.console.append("EXCEPTION " + json.dumps(data["params"].get("exceptionDetails", {}))[:500])

    def call(self, method: str, params: dict | None = None, timeout: float = 60.0):
        return self.loop.run_until_complete(self._call(method, params or {}, timeout))

    def evaluate(self, expression: str, timeout: float = 60.0):
        """Evaluate JS (awaiting a promise) and return its JSON value."""
        res = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                             "returnByValue": True, "timeout": int(timeout * 1000)}, timeout=timeout)
        if "exceptionDetails" in res:
            details = res["exceptionDetails"]
            text = (details.get("exception") or {}).get("description") or details.get("text")
            raise RuntimeError(f"JS error: {text}")
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float, interval: float = 0.5):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.evaluate(expression, timeout=max(5.0, min(30.0, deadline - time.monotonic())))
            except (RuntimeError, TimeoutError) as e:
                last = repr(e)
            if last is True:
                return True
            time.sleep(interval)
        raise TimeoutError(f"waited {timeout} s for {expression!r}; last value {last!r}; "
                           f"console tail: {self.console[-10:]}")

    def screenshot(self) -> bytes:
        res = self.call("Page.captureScreenshot", {"format": "png"}, timeout=60)
        return base64.b64decode(res["data"])

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            if self._ws is not None:
                self.loop.run_until_complete(self._ws.close())
            if self._session is not None:
                self.loop.run_until_complete(self._session.close())
        if self.proc is not None:
            _end_process_group(self.proc, grace=5.0)
        self.loop.close()


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def comfy_server(tmp_path_factory):
    path = comfy_harness.comfyui_path()
    if not path:
        pytest.skip("set COMFYUI_PATH to a ComfyUI checkout to run integration tests")
    path = os.path.abspath(path)
    try:
        import aiohttp  # noqa: F401  (the server needs it; so does the DevTools client)
    except ImportError:
        pytest.skip("aiohttp is not installed (ComfyUI's server needs it): see the browser block in .ci/run")
    if find_chromium() is None:
        pytest.skip("no Chromium: apt-get install -y chromium chromium-driver (see .ci/run)")
    version = required_frontend_version(path)
    if version is None:
        pytest.skip(f"{path}/requirements.txt pins no comfyui-frontend-package")
    frontend = find_frontend(version)
    if frontend is None:
        pytest.skip(f"comfyui-frontend-package=={version} not found: pip install --no-deps --target "
                    f"{FRONTEND_CACHE}/{version} comfyui-frontend-package=={version} (see .ci/run)")
    base = str(tmp_path_factory.mktemp("comfyui_server"))
    # the models and images the workflows name (empty placeholders): newer frontends flag a loader
    # whose file is not on the server
    wt.write_placeholder_inputs(base, [wt.load_workflow(p) for p in wt.workflow_paths()])
    server = ComfyServer(path, frontend, base)
    try:
        server.start()
        if "UpscaleModelLoader" not in server.get_json("/api/object_info"):
            # frontend 1.27 builds its model-loader table from UpscaleModelLoader & co; without it every
            # VAELoader fails to build (shown red as an unknown node): not a fault of the workflows
            pytest.skip("ComfyUI's UpscaleModelLoader did not load (spandrel missing): pip install --no-deps "
                        "spandrel (see .ci/run)")
        # user settings of the temporary user: no first-run templates browser, no minimap over the canvas
        server.post_json("/api/settings", UI_SETTINGS)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def page(comfy_server):
    profile = tempfile.mkdtemp(prefix="sparse-vdit-chromium-")
    browser = Browser(find_chromium(), profile)
    try:
        browser.start()
        browser.call("Page.navigate", {"url": comfy_server.url + "/"})
        # the app is up when its graph exists and the server's node definitions are registered
        browser.wait_for(
            "!!(window.app && window.app.graph && window.LiteGraph && window.LiteGraph.registered_node_types"
            " && window.LiteGraph.registered_node_types['KSampler']"
            " && window.LiteGraph.registered_node_types['SparseVDiTPatch'])",
            timeout=APP_READY_TIMEOUT)
        yield browser
    finally:
        browser.stop()
        shutil.rmtree(profile, ignore_errors=True)


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------

# the screenshot workflow first, so the picture shows it alone after the default graph
WORKFLOWS = sorted((os.path.basename(p) for p in wt.workflow_paths()), key=lambda n: (n != SCREENSHOT_WORKFLOW, n))


def test_server_lists_the_pack_nodes_and_serves_its_workflows_as_templates(comfy_server):
    info = comfy_server.get_json("/api/object_info")
    assert "SparseVDiTPatch" in info
    assert info["SparseVDiTPatch"]["display_name"] == "Sparse-vDiT Patch"
    templates = comfy_server.get_json("/api/workflow_templates")
    assert sorted(templates.get(PACK_FOLDER, [])) == sorted(os.path.splitext(n)[0] for n in WORKFLOWS)
    served = comfy_server.get_json(f"/api/workflow_templates/{PACK_FOLDER}/{urllib.parse.quote(SCREENSHOT_WORKFLOW)}")
    assert served == wt.load_workflow(os.path.join(wt.WORKFLOWS_DIR, SCREENSHOT_WORKFLOW))
    for name in WORKFLOWS:  # the picture the template browser asks for: <name>.jpg beside the workflow
        picture = _http_get(f"{comfy_server.url}/api/workflow_templates/{PACK_FOLDER}/"
                            f"{urllib.parse.quote(os.path.splitext(name)[0] + '.jpg')}")
        assert picture[:3] == b"\xff\xd8\xff", f"{name}: no JPEG picture served"


#: where the frontends show what went wrong on loading (dialogs, toasts)
NOTICE_SELECTOR = ".p-dialog, .comfy-modal, dialog[open], [role=status], [role=alert]"

LOAD_JS = """
(async () => {
  const NOTICES = '""" + NOTICE_SELECTOR + """';
  const name = %(name)s;
  const res = await fetch('/api/workflow_templates/%(pack)s/' + encodeURIComponent(name));
  if (!res.ok) return {error: 'template fetch failed: ' + res.status};
  const wf = await res.json();
  %(mutate)s
  await window.app.loadGraphData(wf);
  await new Promise(r => setTimeout(r, 1500));
  const registered = window.LiteGraph.registered_node_types;
  const types = [...new Set(wf.nodes.map(n => n.type))];
  const graphNodes = window.app.graph._nodes || window.app.graph.nodes || [];
  // missing nodes: a dialog up to frontend 1.4x, a toast (role=status) in 1.49
  const dialogs = [...document.querySelectorAll(NOTICES)]
      .filter(d => d.offsetParent !== null || getComputedStyle(d).display !== 'none')
      .map(d => d.innerText.slice(0, 400));
  return {
    types,
    unregistered: types.filter(t => !(t in registered)),
    // a node whose constructor failed is kept as a bare LGraphNode flagged has_errors
    broken: graphNodes.filter(n => n.has_errors || !(registered[n.type] && n instanceof registered[n.type]))
        .map(n => n.id + ':' + n.type),
    prompt: (await window.app.graphToPrompt()).output,
    graph_types: graphNodes.map(n => n.type).sort(),
    file_types: wf.nodes.map(n => n.type).sort(),
    links: Object.keys(window.app.graph.links || {}).length,
    dialogs,
  };
})()
"""


def _close_dialogs(page):
    page.evaluate("""(() => {
      document.querySelectorAll('.p-dialog-close-button, .p-dialog-header-close, .comfy-modal .close, '
          + '[role=status] button[aria-label=Close], [role=alert] button[aria-label=Close]')
        .forEach(b => b.click());
      document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape'}));
      return true;
    })()""")


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_opens_in_the_browser_with_no_missing_nodes(name, comfy_server, page):
    wf = wt.load_workflow(os.path.join(wt.WORKFLOWS_DIR, name))
    _close_dialogs(page)
    got = page.evaluate(LOAD_JS % {"name": json.dumps(name), "pack": PACK_FOLDER, "mutate": ""}, timeout=120)
    assert "error" not in got, got
    assert got["unregistered"] == [], f"node types the frontend does not know: {got['unregistered']}"
    assert got["graph_types"] == got["file_types"], "the loaded graph lost nodes"
    assert got["broken"] == [], f"nodes the frontend could not build (shown red, as unknown): {got['broken']}"
    assert got["links"] == len(wf["links"])
    missing_dialogs = [d for d in got["dialogs"] if "missing" in d.lower()]
    assert missing_dialogs == [], f"missing-nodes dialog or notice shown: {missing_dialogs}"
    # the frontend queues the prompt that tests/test_workflows.py has this version's backend validate
    info = comfy_server.get_json("/api/object_info")
    assert _class_and_inputs(got["prompt"], info) == _class_and_inputs(_converted_prompt(wf, comfy_server), info)
    png = _fit_and_capture(page)
    if name == SCREENSHOT_WORKFLOW:
        _keep_screenshot(png)
    if name != LOOK_WORKFLOW:  # that one's picture is taken with its result shown (test below)
        _keep_template_picture(png, name)


def _class_and_inputs(prompt: dict, info: dict) -> dict:
    """Per node its class and the inputs its backend declares: frontends 1.27 / 1.35 also send the values of
    widgets they add themselves (Preview Any's 'preview', 'previewMode'), which the backend ignores."""
    def declared(class_type):
        spec = info[class_type]["input"]
        return {*spec.get("required", {}), *spec.get("optional", {})}
    return {node_id: (node["class_type"], {k: v for k, v in node["inputs"].items() if k in declared(node["class_type"])})
            for node_id, node in prompt.items()}


def _converted_prompt(wf: dict, server) -> dict:
    """tests/workflow_tools.py's prompt for ``wf``, from the server's node definitions."""
    info = server.get_json("/api/object_info")
    return wt.workflow_to_prompt(wf, lambda type_: info[type_]["input"])


def _png_size_and_colours(png: bytes) -> tuple[int, int, int]:
    """(width, height, distinct colours in a sample) of an 8-bit RGB/RGBA PNG."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, ctype = 8, b"", 0, 0, 0
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        body = png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, _depth, ctype = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    bpp = {2: 3, 6: 4}.get(ctype)
    if bpp is None:
        return width, height, -1
    raw = zlib.decompress(idat)
    stride = width * bpp + 1
    colours = set()
    for row in range(0, height, max(1, height // 50)):  # filter bytes make this approximate: fine for a count
        line = raw[row * stride + 1:(row + 1) * stride]
        for x in range(0, len(line) - bpp, bpp * 7):
            colours.add(line[x:x + 3])
    return width, height, len(colours)


def _fit_and_capture(page) -> bytes:
    """A screenshot of the whole loaded workflow, fitted in the window."""
    # fit the whole workflow in view, then let the canvas draw
    page.evaluate("""(async () => {
      const c = window.app.canvas;
      const nodes = window.app.graph._nodes || [];
      if (nodes.length && c && c.ds) {
        let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
        for (const g of (window.app.graph._groups || window.app.graph.groups || [])) {
          const b = g._bounding || g.bounding; if (!b) continue;
          x0 = Math.min(x0, b[0]); y0 = Math.min(y0, b[1]); x1 = Math.max(x1, b[0] + b[2]); y1 = Math.max(y1, b[1] + b[3]);
        }
        for (const n of nodes) {
          x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 30);
          x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
        }
        // the canvas spans the window; keep clear of the side bar (left) and the tab / menu bars (top)
        const el = c.canvas, w = el.clientWidth || el.width, h = el.clientHeight || el.height;
        const left = 80, top = 110, right = 20, bottom = 20;
        const scale = Math.min((w - left - right) / (x1 - x0), (h - top - bottom) / (y1 - y0), 1.0);
        c.ds.scale = scale;
        c.ds.offset = [(left + (w - left - right - scale * (x1 - x0)) / 2) / scale - x0,
                       (top + (h - top - bottom - scale * (y1 - y0)) / 2) / scale - y0];
        c.setDirty(true, true);
      }
      await new Promise(r => setTimeout(r, 1500));
      return true;
    })()""")
    png = page.screenshot()
    width, height, colours = _png_size_and_colours(png)
    assert (width, height) == WINDOW
    assert colours > 20, "the screenshot looks blank"
    return png


def _keep_screenshot(png: bytes) -> None:
    """The README's picture: in $SPARSE_VDIT_SCREENSHOT_DIR (or the temp folder), and in docs/ when updating."""
    out_dir = os.environ.get("SPARSE_VDIT_SCREENSHOT_DIR") or tempfile.gettempdir()
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "sparse_vdit_wan21_t2v_workflow.png"), "wb") as f:
        f.write(png)
    if UPDATE:
        os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
        with open(SCREENSHOT, "wb") as f:
            f.write(png)


def _keep_template_picture(png: bytes, name: str) -> None:
    """workflows/<name>.jpg, what ComfyUI's template browser shows for a pack's template (when updating)."""
    if not UPDATE:
        return
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    image = image.crop((70, 100, image.width, image.height))  # the side bar and the menu bars are not the workflow
    image.thumbnail((THUMBNAIL[0] * 2, THUMBNAIL[1] * 2))
    card = Image.new("RGB", (image.width, round(image.width * THUMBNAIL[1] / THUMBNAIL[0])), image.getpixel((0, 0)))
    card.paste(image, (0, (card.height - image.height) // 2))
    card.resize(THUMBNAIL, Image.LANCZOS).save(os.path.join(wt.WORKFLOWS_DIR, os.path.splitext(name)[0] + ".jpg"),
                                               quality=85)


QUEUE_JS = """
(async () => {
  const before = Object.keys(await (await fetch('/api/history')).json());
  await window.app.queuePrompt(0, 1);
  return before;
})()
"""


def test_look_at_a_plan_runs_with_no_model_and_shows_the_plan(comfy_server, page):
    """Load the template, queue it from the frontend (as the Queue button does), read the picture back."""
    from sparse_vdit.plans.format import load_plan
    from sparse_vdit.plans.preview import render_plan

    _close_dialogs(page)
    got = page.evaluate(LOAD_JS % {"name": json.dumps(LOOK_WORKFLOW), "pack": PACK_FOLDER, "mutate": ""}, timeout=120)
    assert got["unregistered"] == [] and got["broken"] == [], got
    before = set(page.evaluate(QUEUE_JS, timeout=60))
    deadline, entry = time.monotonic() + QUEUE_TIMEOUT, None
    while time.monotonic() < deadline and entry is None:
        history = comfy_server.get_json("/api/history")
        done = [v for k, v in history.items() if k not in before and v.get("status", {}).get("completed")]
        failed = [v.get("status") for k, v in history.items() if k not in before
                  and v.get("status", {}).get("status_str") == "error"]
        assert not failed, f"the prompt failed: {json.dumps(failed)[:2000]}\n{_tail(comfy_server.log)}"
        entry = done[0] if done else None
        time.sleep(1.0)
    assert entry is not None, f"the prompt did not finish in {QUEUE_TIMEOUT} s:\n{_tail(comfy_server.log)}"
    outputs = entry["outputs"]
    images = [image for out in outputs.values() for image in out.get("images", [])]
    assert len(images) == 1, outputs
    query = urllib.parse.urlencode({k: images[0][k] for k in ("filename", "subfolder", "type")})
    png = _http_get(f"{comfy_server.url}/api/view?{query}", timeout=30)
    width, height, colours = _png_size_and_colours(png)
    expected = render_plan(load_plan(os.path.join(PACK, "plans", LOOK_PLAN)))
    assert (width, height) == expected.size and colours > 5
    texts = [t for out in outputs.values() for t in out.get("text", [])]
    assert any("static baseline" in t and "30 layers x 12 heads" in t for t in texts), texts
    time.sleep(2.0)  # the frontend shows the result in the Preview Image node
    _keep_template_picture(_fit_and_capture(page), LOOK_WORKFLOW)


def test_an_unknown_node_type_is_caught(comfy_server, page):
    """Negative control: the checks above do see a missing node (renamed in the browser)."""
    _close_dialogs(page)
    mutate = "wf.nodes.find(n => n.type === 'SparseVDiTPatch').type = 'SparseVDiTNoSuchNode';"
    got = page.evaluate(LOAD_JS % {"name": json.dumps(SCREENSHOT_WORKFLOW), "pack": PACK_FOLDER, "mutate": mutate},
                        timeout=120)
    assert got["unregistered"] == ["SparseVDiTNoSuchNode"]
    assert any(b.endswith(":SparseVDiTNoSuchNode") for b in got["broken"])
    assert any("missing" in d.lower() for d in got["dialogs"]), got["dialogs"]
    _close_dialogs(page)

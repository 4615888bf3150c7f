"""Open an HTML file in headless Chromium over the DevTools protocol (not a test module).

:func:`open_page` loads the page, waits for it to settle, loads every image it shows (and,
with ``embedded=True``, every ``data:image`` URI written into the file, which is where a
single-page report such as Snakemake's keeps figures it shows on demand), takes a screenshot
and returns what the console logged as an error. The protocol is spoken with websocket-client,
a few JSON messages; nothing leaves the machine (``file://`` pages only).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# Every <img> of the page, and (embedded) every data:image URI in the file, decoded by the browser.
IMAGES_JS = """
(async (embedded) => {
  const shown = Array.from(document.images);
  await Promise.all(shown.filter(i => !i.complete).map(i => new Promise(r => { i.onload = i.onerror = r; })));
  const images = shown.map(i => ({kind: "img", src: (i.currentSrc || i.src).slice(0, 80), width: i.naturalWidth}));
  if (embedded) {
    const html = document.documentElement.outerHTML;
    const pattern = /data:image\\/(?:png|jpeg|gif|svg\\+xml)(?:;[\\w.=+-]+)*;base64,[A-Za-z0-9+\\/=]+/g;
    const uris = Array.from(new Set(html.match(pattern) || []));
    for (const uri of uris) {
      const width = await new Promise(r => {
        const image = new Image();
        image.onload = () => r(image.naturalWidth);
        image.onerror = () => r(0);
        image.src = uri;
      });
      images.push({kind: "embedded", src: uri.slice(0, uri.indexOf(";base64,")), width});
    }
  }
  return images;
})
"""


@dataclass
class PageReport:
    images: list[dict]  # kind ("img" or "embedded"), src (its start), width (naturalWidth; 0: not loaded)
    errors: list[str]  # console errors, uncaught exceptions, failed loads
    screenshot: Path
    text: str  # document.body.innerText


class _DevTools:
    """Just enough of the DevTools protocol: numbered calls, events kept for later."""

    def __init__(self, url: str, timeout: float) -> None:
        import websocket

        self.socket = websocket.create_connection(url, timeout=timeout, suppress_origin=True)
        self.events: list[dict] = []
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {event} within {timeout} s")
            self.socket.settimeout(max(deadline - time.monotonic(), 0.1))
            self.events.append(json.loads(self.socket.recv()))

    def errors(self) -> list[str]:
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(
                    "console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
                )
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(
                    "exception: " + str(details.get("exception", {}).get("description", details.get("text")))
                )
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(
                    f"log ({params['entry'].get('source')}): {params['entry']['text']} {params['entry'].get('url', '')}"
                )
        return found

    def close(self) -> None:
        self.socket.close()


def _devtools_port(profile: Path, process: subprocess.Popen, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    port_file = profile / "DevToolsActivePort"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"chromium exited with {process.returncode} before it listened")
        if port_file.is_file() and port_file.read_text().strip():
            return int(port_file.read_text().splitlines()[0])
        time.sleep(0.1)
    raise TimeoutError(f"chromium wrote no {port_file} within {timeout} s")


def open_page(
    chromium: str,
    page: Path,
    screenshot: Path,
    *,
    embedded: bool = False,
    settle_s: float = 2.0,
    timeout: float = 90,
) -> PageReport:
    """Load ``page`` in headless Chromium; its images, console errors, text and a PNG screenshot."""
    profile = Path(tempfile.mkdtemp(prefix="amc-chromium-"))
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
        "--remote-debugging-port=0", f"--user-data-dir={profile}", "--window-size=1400,1000", "about:blank",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port = _devtools_port(profile, process, timeout)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as response:
            target = next(t for t in json.load(response) if t["type"] == "page")
        tools = _DevTools(target["webSocketDebuggerUrl"], timeout)
        try:
            for domain in ("Runtime", "Log", "Page"):
                tools.call(f"{domain}.enable")
            tools.call("Page.navigate", url=page.resolve().as_uri())
            tools.wait_for("Page.loadEventFired", timeout)
            time.sleep(settle_s)  # scripts that render after the load event (a single-page report)
            images = tools.call(
                "Runtime.evaluate", expression=f"{IMAGES_JS}({'true' if embedded else 'false'})",
                awaitPromise=True, returnByValue=True,
            )["result"]["value"]  # fmt: skip
            text = tools.call("Runtime.evaluate", expression="document.body.innerText", returnByValue=True)
            size = tools.call("Page.getLayoutMetrics")["cssContentSize"]  # the whole page, up to a limit
            clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 8000), "scale": 1}
            shot = tools.call("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            return PageReport(images, tools.errors(), screenshot, text["result"]["value"])
        finally:
            tools.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(profile, ignore_errors=True)

"""rlr-tui --serve: the dashboard in a real (headless) browser, through textual-serve.

The page draws the terminal on a canvas, so the test reads what the app sent to the page: the
WebSocket frames the browser received (Chrome DevTools protocol, Network domain), and checks the
dashboard's status line is among them. A screenshot is saved beside the test's files."""

import asyncio
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from rlr_engine.control.detached import start_detached

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,  # an engine process and a browser
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)"),
]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port}")


async def received_text(debug_port: int, url: str, wanted: list[str], timeout: float, screenshot) -> str:
    """Open ``url`` in the browser and collect the text of the WebSocket frames it receives until
    every string in ``wanted`` appeared."""
    import aiohttp

    pages = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{debug_port}/json/list", timeout=10).read())
    page = next(p for p in pages if p.get("type") == "page")
    text = ""
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            await ws.send_json({"id": 1, "method": "Network.enable"})
            await ws.send_json({"id": 2, "method": "Page.navigate", "params": {"url": url}})
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not all(w in text for w in wanted):
                try:
                    message = await ws.receive_json(timeout=max(0.1, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    break
                if message.get("method") == "Network.webSocketFrameReceived":
                    frame = message["params"]["response"]
                    data = frame["payloadData"]
                    if frame.get("opcode") == 2:
                        data = base64.b64decode(data).decode("utf-8", "replace")
                    text += ANSI.sub("", data)
            await ws.send_json({"id": 3, "method": "Page.captureScreenshot"})
            while True:
                message = await ws.receive_json(timeout=30)
                if message.get("id") == 3:
                    screenshot.write_bytes(base64.b64decode(message["result"]["data"]))
                    break
    return text


def test_the_dashboard_is_served_to_a_browser(tmp_path, engine_processes):
    run_dir, _ = start_detached(
        [
            "quickstart",
            "--device",
            "cpu",
            "--set",
            "dataset=synthetic",
            "--set",
            "epochs=500",
            "--set",
            "attack_every=0",
            "--runs",
            str(tmp_path / "runs"),
        ]
    )
    engine_processes.append(run_dir)
    port, debug_port = free_port(), free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "rlr_tui.app", "--serve", "--port", str(port), "--attach", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    browser = None
    try:
        wait_for_port(port, 60)
        browser = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--no-first-run",
                f"--user-data-dir={tmp_path / 'chromium'}",
                f"--remote-debugging-port={debug_port}",
                "--window-size=1200,800",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(debug_port, 60)
        text = asyncio.run(
            received_text(
                debug_port,
                f"http://127.0.0.1:{port}",
                ["RUNNING", "quickstart", "epoch"],
                120,
                tmp_path / "browser.png",
            )
        )
        assert "RUNNING" in text and "quickstart" in text and "epoch" in text, text[-2000:]
        assert (tmp_path / "browser.png").stat().st_size > 1000
    finally:
        for proc in (browser, server):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()

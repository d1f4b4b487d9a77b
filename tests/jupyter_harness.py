"""A real JupyterLab on loopback and a real Chromium driving it (Debian's, via playwright).

Used by the slow browser tests. JupyterLab gets its own config, settings,
workspace and runtime folders so nothing from the user's setup leaks in.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-3000:] if log else ''}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


@contextlib.contextmanager
def server(argv: list[str], root: Path, tmp: Path, ready_path: str, timeout: float = 180) -> Iterator[str]:
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", JUPYTER_CONFIG_DIR=str(tmp / "config"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"),
               JUPYTER_RUNTIME_DIR=str(tmp / "runtime"), EXPLORER_STORE=str(tmp / "store"))
    # No "get notified about Jupyter news?" toast over the screenshots.
    news = tmp / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True, exist_ok=True)
    news.write_text('{"fetchNews": "false"}')
    log = tmp / f"server-{port}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([*argv, f"--port={port}"], cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + ready_path, timeout, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def jupyter_lab(root: Path, tmp: Path) -> contextlib.AbstractContextManager[str]:
    argv = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ServerApp.token=",
            "--ServerApp.password=", "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={root}",
            "--LabApp.news_url=", "--ServerApp.disable_check_xsrf=True"]
    return server(argv, root, tmp, "/api/status")


@contextlib.contextmanager
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = b.new_page(viewport={"width": 1400, "height": 1000})
            yield page
        finally:
            b.close()


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def restart_and_run_all(page, timeout_ms: int = 180_000, tries: int = 3) -> None:
    """Kernel menu > Restart Kernel and Run All Cells, until the first cell has really started.

    A plain Run All right after start-up can run nothing, and so, now and then,
    can the first restart while the kernel is still connecting: so check and retry.
    """
    page.wait_for_selector(".jp-Notebook", timeout=timeout_ms)
    for _ in range(tries):
        wait_idle(page, timeout_ms)
        _restart_and_run_all(page, timeout_ms)
        try:
            page.wait_for_function(
                "() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]"
                ".some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))", timeout=40_000)
            return
        except Exception:  # playwright's TimeoutError: nothing ran, try again
            continue
    raise TimeoutError(f"Restart Kernel and Run All Cells ran nothing in {tries} tries")


def _restart_and_run_all(page, timeout_ms: int) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Kernel$")).click(timeout=timeout_ms)
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Restart Kernel and Run All Cells")).click(
        timeout=timeout_ms)
    page.locator(".jp-Dialog-footer button.jp-mod-accept").click(timeout=timeout_ms)


def wait_idle(page, timeout_ms: int = 180_000) -> None:
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=timeout_ms)


def symbol_count(page, root: str = ".tx-lab") -> int:
    """Data points drawn by Vega in the lab's frontier chart (SVG renderer; legend symbols excluded)."""
    return page.locator(f"{root} .vega-embed g.mark-symbol.role-mark path").count()

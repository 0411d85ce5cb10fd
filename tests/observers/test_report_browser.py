"""The report in a real browser: headless Chromium runs its script, we read the DOM it built.

Chromium comes from Debian's packages (``make browser``, a prerequisite of
``make test``).  Without it these tests skip, unless ``ANYPOOL_REQUIRE_BROWSER``
is set (``make test`` sets it), where they fail.  Screenshots land in
``artifacts/`` (gitignored) for a person to look at.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

import anypool
import tasks
from anypool.observers.recorder import Row
from anypool.observers.report import MAX_BARS, write_report

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
EVIL = "</script><script>document.title='pwned'</script>\"'><img src=x onerror=\"document.title='pwned'\">"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=5000", "--window-size=1400,1300"]


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        msg = "headless Chromium is not installed (make browser installs it)"
        if os.environ.get("ANYPOOL_REQUIRE_BROWSER"):
            pytest.fail(msg)
        pytest.skip(msg)
    return exe


def run_chromium(exe: str, *args: str, timeout: float = 45) -> str:
    """Run Chromium with the flags known to work here; its stdout.  Nothing of it outlives the call."""
    with tempfile.TemporaryDirectory(prefix="anypool-chromium-") as profile:
        proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={profile}", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        finally:
            # its helpers (zygote, utility processes) share its process group
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    assert proc.returncode == 0, f"chromium exited with {proc.returncode}:\n{err[-3000:]}"
    return out


def dom_of(exe: str, page: Path, fragment: str = "") -> str:
    return run_chromium(exe, "--dump-dom", page.as_uri() + fragment)


def screenshot(exe: str, page: Path, name: str, fragment: str = "") -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / name
    target.unlink(missing_ok=True)
    run_chromium(exe, f"--screenshot={target}", page.as_uri() + fragment)
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000, "a real, non-blank screenshot"
    return target


def test_the_browser_draws_one_bar_per_attempt_and_shows_user_text_as_text(
        chromium: str, tmp_path: Path) -> None:
    with anypool.Pool("thread", 3, record=True) as pool:
        futs = [pool.submit(tasks.sleep, 0.002 * (i % 7), i) for i in range(40)]
        bad = pool.submit(tasks.fail_on, EVIL, bad=EVIL)
        retried = pool.with_options(retries=2, backoff=0).submit(tasks.fail_on, 3)
        late = pool.with_options(timeout=0.05).submit(tasks.sleep, 0.2)
        for f in futs:
            f.result(10)
        for f in (bad, retried, late):
            f.exception(10)
    rows = pool.timeline()
    assert len(rows) == 40 + 1 + 3 + 1
    page = Path(pool.report(tmp_path / "run.html", title=f"run {EVIL}"))
    # the evil error's bar, in the page's own order (by start time)
    evil = next(i for i, r in enumerate(rows) if EVIL in r.error)

    dom = dom_of(chromium, page, f"#bar={evil}")

    assert f'data-bars="{len(rows)}"' in dom, "the script ran to its end"
    assert len(re.findall(r'<rect class="bar o-', dom)) == len(rows)
    assert len(re.findall(r'<rect class="bar o-error', dom)) == 4
    assert len(re.findall(r'<rect class="bar o-timeout', dom)) == 1
    # nothing the user wrote ran or became an element
    assert "pwned</title>" not in dom
    assert dom.count("<script") == 2
    assert "<img" not in dom
    # the hover box shows the error and the arguments, as text
    tip = dom.split('id="tip"', 1)[1].split("</div></div>", 1)[0]
    shown = html.escape(EVIL, quote=False)
    assert f"ValueError: bad item {shown}" in tip
    assert "thread-" in tip
    assert "outcome: </b>error" in tip

    shot = screenshot(chromium, page, "report.png", f"#bar={evil}")
    assert shot.exists()


def test_a_hundred_thousand_attempts_draw_a_sample_that_says_so(chromium: str, tmp_path: Path) -> None:
    t0 = 1_700_000_000.0
    rows = []
    for i in range(100_000):
        w = i % 8
        start = t0 + (i // 8) * 0.004 + w * 0.0003
        outcome = ("error", "timeout", "crash")[i % 3] if i % 997 == 0 else "ok"
        rows.append(Row(i, i, 1, 1, f"process-{w + 1}", start, start + 0.003, outcome, "work.step",
                        f"({i},)", "" if outcome == "ok" else f"{outcome}: item {i}"))
    page = Path(write_report(tmp_path / "big.html", rows, title="100,000 attempts"))

    dom = dom_of(chromium, page)

    assert f'data-bars="{MAX_BARS}"' in dom
    assert len(re.findall(r'<rect class="bar o-', dom)) == MAX_BARS
    assert len(re.findall(r'<path class="density"', dom)) == 8, "one busy band per lane"
    assert re.search(r"draws <span id=\"shown\">5,000</span> of <span id=\"total\">100,000</span>", dom)
    screenshot(chromium, page, "report-100k.png")

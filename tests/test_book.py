"""The book as readers get it: ``make book TRAIN=0`` (strict, a warning fails the build) from the
committed results only, then every page opened in headless Chromium (Debian's ``chromium``).

A screenshot of the claims page and of Fig. 2 is kept under ``_build/screenshots`` as an artifact.
"""

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "book" / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
MARKER = "# deviation from paper:"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Loads each page in a same-origin frame and reports, per page, the images that did not load
# and the cells that show a traceback.
HARNESS = """<!doctype html><html><body><pre id="result">running</pre><script>
const pages = PAGES;
async function check(page) {
  const frame = document.createElement("iframe");
  document.body.appendChild(frame);
  await new Promise(done => { frame.onload = done; frame.src = page; });
  const doc = frame.contentDocument;
  const images = [...doc.querySelectorAll("img")];
  await Promise.all(images.map(i => i.complete ? null : new Promise(r => {
    i.onload = r; i.onerror = r; })));
  const result = {page, images: images.length,
    broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src),
    errors: doc.querySelectorAll(".output.traceback, .output.error").length,
    title: doc.title};
  frame.remove();
  return result;
}
(async () => {
  const results = [];
  for (const page of pages) results.push(await check(page));
  document.getElementById("result").textContent = JSON.stringify(results);
})();
</script></body></html>"""


def toc_pages() -> list[str]:
    """Every page of ``_toc.yml``, as a path under the HTML folder."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc["parts"]:
        files += [c["file"] for c in part["chapters"]]
    return [f"{f}.html" for f in files]


@pytest.fixture(scope="module")
def built() -> Path:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["make", "book", "TRAIN=0"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-4000:]
    return HTML


@pytest.mark.slow
def test_every_page_is_built_without_warnings(built: Path) -> None:
    for page in toc_pages():
        assert (built / page).exists(), page
    # The cpu profile ran: a page names it, and none shows a traceback.
    fig2 = (built / "notebooks" / "fig2_main.html").read_text()
    assert "cpu profile" in fig2
    for page in built.glob("notebooks/*.html"):
        assert "Traceback" not in page.read_text(), page.name


def test_deviations_page_names_every_marked_file() -> None:
    """Each file whose code departs from the paper (``# deviation from paper:``) is on the page."""
    page = (ROOT / "book" / "deviations.md").read_text()
    marked = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "vldlib").rglob("*.py")
        if MARKER in path.read_text()
    }
    assert marked, "no deviation markers found"
    missing = sorted(m for m in marked if f"`{m}`" not in page)
    assert not missing, f"book/deviations.md does not name {missing}"


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("Debian's chromium is not installed and `make chromium` could not install it")
    return path


@pytest.fixture(scope="module")
def server(built: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(built))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.mark.slow
def test_pages_render_in_chromium(built: Path, server: str, tmp_path: Path) -> None:
    browser = chromium()
    pages = toc_pages()
    (built / "_harness.html").write_text(HARNESS.replace("PAGES", json.dumps(pages)))
    proc = subprocess.run(
        [
            browser,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=60000",
            "--dump-dom",
            f"{server}/_harness.html",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    found = re.search(r'<pre id="result">(.*?)</pre>', proc.stdout, re.S)
    assert found and found.group(1) != "running", proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert [r["page"] for r in results] == pages
    for r in results:
        assert not r["broken"], f"{r['page']}: images not loaded: {r['broken']}"
        assert r["errors"] == 0, f"{r['page']}: {r['errors']} error cells"
    figures = {r["page"]: r["images"] for r in results}
    assert figures["notebooks/fig2_main.html"] >= 1 and figures["notebooks/fig3_dropout_rates.html"]

    SHOTS.mkdir(parents=True, exist_ok=True)
    for page in ("notebooks/claims.html", "notebooks/fig2_main.html"):
        shot = SHOTS / f"{Path(page).stem}.png"
        shot.unlink(missing_ok=True)
        subprocess.run(
            [
                browser,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={tmp_path / 'profile'}",
                "--virtual-time-budget=5000",
                "--window-size=1280,1600",
                f"--screenshot={shot}",
                f"{server}/{page}",
            ],
            capture_output=True,
            timeout=120,
        )
        assert shot.exists() and shot.stat().st_size > 10_000, f"no screenshot of {page}"


def test_the_claims_page_reads_the_extension_figures_grid() -> None:
    profiles = ROOT / "notebooks" / "profiles"
    cpu = yaml.safe_load((profiles / "cpu.yaml").read_text())
    small = yaml.safe_load((profiles / "cpu_extensions.yaml").read_text())
    assert cpu["extension_seeds"] == small["seeds"]
    assert cpu["extension_test_envs"] == small["test_envs"]

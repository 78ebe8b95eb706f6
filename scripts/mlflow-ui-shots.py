"""Screenshots of the MLflow UI comparing the runs of one experiment.

Usage: mlflow-ui-shots.py BASE_URL EXPERIMENT_ID RUN_IDS_JSON OUT_DIR
Writes OUT_DIR/curves.png (the validation curves of every run) and
OUT_DIR/compare.png (the runs' differing params and their metrics), with
Playwright driving the system's Chromium.
"""
import shutil
import sys
from playwright.sync_api import sync_playwright
base = sys.argv[1]; exp = sys.argv[2]; runs = sys.argv[3]; out = sys.argv[4]
with sync_playwright() as p:
    b = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=["--no-sandbox"])
    pg = b.new_page(viewport={"width": 1600, "height": 1000})
    pg.goto(f"{base}/#/experiments/{exp}/runs?compareRunsMode=CHART")
    pg.wait_for_timeout(5000)
    # Close the assistant side panel when the UI shows one.
    close = pg.get_by_role("button", name="Close")
    if close.count():
        close.first.click()
        pg.wait_for_timeout(1000)
    box = pg.get_by_placeholder("Search metric charts")
    box.fill("val_")
    pg.wait_for_timeout(3000)
    pg.screenshot(path=f"{out}/curves.png")
    pg.goto(f"{base}/#/compare-runs?runs={runs}&experiments=[\"{exp}\"]")
    pg.wait_for_timeout(5000)
    for section in ["Visualizations", "Run details"]:
        pg.get_by_text(section, exact=True).first.click()
        pg.wait_for_timeout(500)
    sw = pg.get_by_role("switch")
    if sw.count():
        sw.first.click()
    pg.wait_for_timeout(1500)
    pg.screenshot(path=f"{out}/compare.png")
    b.close()

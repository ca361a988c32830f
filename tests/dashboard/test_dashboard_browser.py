"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright,
against `create_app` on a real uvicorn with the real engine on the tiny model.

Signs in, opens every page, gives feedback, watches the job queue update live, rolls a
version back as admin (and sees the engine swap models), and checks that a user key
sees no admin control. Screenshots go to tests/artifacts/dashboard/ (printed, ignored
by git). `make setup` installs Chromium; the browser is never downloaded.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "dashboard"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed at /usr/bin/chromium "
                                "(`make setup` installs Debian's chromium package)")


def lora_version(db, tiny_model_dir: Path, scratch: Path, seed: int) -> str:
    """A random LoRA adapter for the tiny model, registered as a version that passed its gate."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from selftrain.registry import register

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter = scratch / f"adapter-{seed}"
    model.save_pretrained(adapter)
    with db.session() as session:
        return register(session, adapter, scratch / "versions", base_model=str(tiny_model_dir), parent_id=None,
                        dataset_snapshot_id=None, training_config={"lora_r": 2},
                        metrics={"pass_rate": 0.4 + 0.2 * seed, "train_loss": 1.0 / seed,
                                 "history": [{"iteration": i, "reward": 0.1 * i * seed, "kl": 0.05 * i * i}
                                             for i in range(1, 9)]},
                        eval_report={}, success=True).id


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_model_dir, live_server):
    """The server with two versions (v0002 active) and keys for root (admin), alice and bob."""
    from selftrain.config import load_settings
    from selftrain.registry import activate
    from selftrain.serve.app import create_app
    from selftrain.serve.engine import GenerationEngine
    from selftrain.serve.keys import create_key
    from selftrain.store.db import Database
    from selftrain.store.records import record_interaction
    from selftrain.store.schema import Alert, TrainingMetric

    ws = tmp_path_factory.mktemp("dashboard-browser")
    (ws / "selftrain.toml").write_text(f'base_model = "{tiny_model_dir}"\nmax_new_tokens = 16\n'
                                       "learning_threshold = 20\n"
                                       "serve_max_tokens = 16\nserve_max_prompt_tokens = 256\n", encoding="utf-8")
    with pytest.MonkeyPatch.context() as env:
        for key in [k for k in os.environ if k.startswith("SELFTRAIN_")]:
            env.delenv(key)
        settings = load_settings(ws)
        db = Database(settings.resolved_database_url)
        with db.session() as session:
            keys = {name: create_key(session, name, "admin" if name == "root" else "user")[1]
                    for name in ("root", "alice", "bob")}
            bob_id = record_interaction(session, user="bob", source="api", prompt="bob's secret prompt",
                                        code="x = 1").id
        versions = [lora_version(db, tiny_model_dir, ws, seed) for seed in (1, 2)]
        with db.session() as session:
            activate(session, versions[0])
            activate(session, versions[1])
            session.add_all(TrainingMetric(run_id=versions[1], step=step, loss=2.5 / step ** 0.5,
                                           eval_loss=2.7 / step ** 0.5 if step % 5 == 0 else None)
                            for step in range(1, 41))
            session.add(Alert(kind="loss_spike", message="step 12: loss rose 2.1x its recent mean",
                              run_id=versions[1]))
        engine = GenerationEngine(settings, db).start()
        try:
            with live_server(create_app(settings, db, engine=engine)) as live:
                yield {"url": live.url, "keys": keys, "db": db, "versions": versions, "bob_id": bob_id}
        finally:
            engine.stop()
            db.close()


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    print(f"\nscreenshots: {ARTIFACTS}")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900})
        context.set_default_timeout(15_000)
        yield context
        context.close()


@pytest.fixture
def page(browser_context):
    browser_context.clear_cookies()
    tab = browser_context.new_page()
    yield tab
    tab.close()


def sign_in(page, site, who: str) -> None:
    page.goto(site["url"] + "/")
    assert page.url.startswith(site["url"] + "/login"), page.url  # not signed in: sent to the form
    page.fill("#key", site["keys"][who])
    page.click("#sign-in")
    page.wait_for_selector("#who")
    assert page.inner_text("#who") == who


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_admin_opens_every_page_and_the_json_api_still_works(page, site):
    # An answer through the JSON API (Bearer auth, unchanged), from the active version.
    answer = httpx.post(site["url"] + "/api/generate", json={"prompt": "Write `is_even(n)`.", "max_tokens": 8},
                        headers={"Authorization": f"Bearer {site['keys']['alice']}"}, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] == site["versions"][1]
    interaction_id = answer.json()["interaction_id"]

    page.goto(site["url"] + "/login")
    page.fill("#key", "st-not-a-key")
    page.click("#sign-in")
    assert "not valid or has been revoked" in page.inner_text("[role=alert]")
    sign_in(page, site, "root")
    assert site["versions"][1] in page.inner_text("#active-version")
    assert page.locator("svg.chart").count() == 3
    shot(page, "01-overview-admin")

    page.click("nav >> text=Interactions")
    page.wait_for_selector("#interaction-list")
    assert "bob's secret prompt" in page.inner_text("#interaction-list")  # an admin sees everyone's
    page.click(f"a[href='/interactions/{interaction_id}'] >> nth=0")
    page.wait_for_selector("#code")
    assert page.locator(f"a[href='/versions/{site['versions'][1]}']").count() >= 1  # the version that answered
    shot(page, "02-interaction-admin")

    for name, path, selector in (("03-jobs", "/jobs", "#jobs"), ("04-versions", "/versions", "#versions"),
                                 ("05-version", f"/versions/{site['versions'][1]}", "#curves"),
                                 ("06-compare", f"/versions/compare?a={site['versions'][0]}&b={site['versions'][1]}",
                                  "#metric-deltas"),
                                 ("07-training", "/training", "#runs")):
        page.goto(site["url"] + path)
        page.wait_for_selector(selector)
        shot(page, name)


def test_user_gives_feedback_and_sees_no_admin_control(page, site):
    with site["db"].session() as session:
        from selftrain.store.records import record_interaction

        mine = record_interaction(session, user="alice", source="api", prompt="alice wants slugify",
                                  code="def slugify(t):\n    return t", model_version=site["versions"][1]).id
    sign_in(page, site, "alice")
    for path in ("/", "/interactions", "/jobs", "/versions", f"/versions/{site['versions'][0]}", "/training"):
        page.goto(site["url"] + path)
        assert page.locator("[data-admin]").count() == 0, path
        assert page.locator("text=Roll back").count() == 0 and page.locator("text=Submit a job").count() == 0
    page.goto(site["url"] + "/interactions")
    assert "bob's secret prompt" not in page.content()
    page.goto(site["url"] + f"/interactions/{site['bob_id']}")
    assert f"There is no interaction with id {site['bob_id']}" in page.inner_text("[role=alert]")
    page.goto(site["url"] + "/versions/rollback")
    assert "needs an admin key" in page.inner_text("[role=alert]")

    page.goto(site["url"] + f"/interactions/{mine}")
    page.click("#send-feedback")  # nothing chosen: one sentence, on the page
    assert "Feedback needs at least one of" in page.inner_text("[role=alert]")
    page.select_option("#rating", "5")
    page.check("input[name=accepted][value=yes]")
    page.fill("#comment", "exactly what I needed")
    page.click("#send-feedback")
    page.wait_for_selector("#feedback-history")
    assert "your feedback is saved" in page.inner_text("[role=status]")
    assert "exactly what I needed" in page.inner_text("#feedback-history")
    shot(page, "08-feedback-user")
    shown = httpx.get(site["url"] + f"/api/interactions/{mine}", timeout=10,
                      headers={"Authorization": f"Bearer {site['keys']['alice']}"}).json()
    assert shown["feedback"] == {"rating": 5, "accepted": True, "corrected_code": None,
                                 "comment": "exactly what I needed"}
    page.click("#sign-out")
    page.wait_for_selector("#sign-in")
    page.goto(site["url"] + "/interactions")
    assert page.url.startswith(site["url"] + "/login")  # the session is gone


def test_jobs_update_live_and_admin_rolls_back_with_confirmation(page, site):
    sign_in(page, site, "root")
    page.goto(site["url"] + "/jobs")
    page.fill("#payload", "{not json")
    page.click("#submit-job-button")
    assert "The payload must be a JSON object" in page.inner_text("[role=alert]")
    queued = httpx.post(site["url"] + "/api/admin/jobs", json={"type": "sleep", "payload": {"seconds": 1.0}},
                        headers={"Authorization": f"Bearer {site['keys']['root']}"}, timeout=10).json()
    # Submitted elsewhere while the page is open: the table shows it without a reload.
    page.wait_for_selector(f"tr[data-job='{queued['id']}']", timeout=10_000)
    page.click(f"tr[data-job='{queued['id']}'] >> text=Cancel")
    assert "The job is cancelled" in page.inner_text("[role=status]")
    shot(page, "09-job-cancelled")

    old, new = site["versions"]
    page.goto(site["url"] + "/versions")
    page.click("#rollback")
    assert page.inner_text("#rollback-target") == old
    shot(page, "10-rollback-confirm")
    page.click("#confirm-rollback")
    page.wait_for_selector("[role=status]")
    assert page.inner_text("#active-id") == old
    shot(page, "11-rolled-back")
    deadline = time.monotonic() + 60  # the engine swaps the model in without a restart
    while httpx.get(site["url"] + "/healthz", timeout=10).json()["model_version"] != old:
        assert time.monotonic() < deadline, "the engine did not swap to the rolled-back version"
        time.sleep(0.2)
    with site["db"].session() as session:
        from selftrain.registry import active_version

        assert active_version(session).id == old

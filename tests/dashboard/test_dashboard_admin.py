"""What the pages show and what an admin can do from them: jobs submitted, cancelled and
retried; versions activated and rolled back behind a confirmation; alerts resolved."""

from __future__ import annotations

import re

from sqlalchemy import func, select

from selftrain.registry import active_version
from selftrain.store.deployments import Deployment
from selftrain.store.schema import Alert, Job

from .conftest import PAGES, alert_text


def active(db) -> str | None:
    with db.session() as session:
        found = active_version(session)
        return found.id if found else None


def test_pages_show_what_the_store_holds(dash, seeded):
    dash.sign_in("admin")
    overview = dash.client.get("/").text
    assert re.search(r'id="active-version">.*?v0002', overview, re.S)
    assert re.search(r'class="big">35 / 10<', overview)  # 35 unconsumed of learning_threshold 10
    assert '<progress value="10" max="10">' in overview
    assert "50.0%" in overview  # one accepted, one rejected
    assert "step 4: loss rose 3x" in overview and overview.count("<svg") == 3

    version = dash.client.get("/versions/v0002").text
    for text in ("loss by step", "reward by iteration", "KL by iteration", "examples dropped, by reason",
                 "examples kept, by category", "quality score of every interaction", "12 examples kept",
                 "t1", 'class="marker"', "deploy"):
        assert text in version, text
    assert '"history"' not in version  # the RL records are drawn, not dumped

    compare = dash.client.get("/versions/compare?a=v0002&b=v0003").text
    assert re.search(r"<td>pass_rate</td><td>1</td><td>0.5</td>\s*<td class=\"bad\">-0.5</td>", compare)
    assert "only v0002 passed 1, only v0003 passed 0" in compare and "exact McNemar p = 1" in compare
    for query, sentence in (("a=v0002&b=v0002", "Choose two different versions"),
                            ("a=v0002", "Choose two versions to compare"),
                            ("a=v0002&b=v9", "There is no model version 'v9'")):
        page = dash.client.get(f"/versions/compare?{query}")
        assert page.status_code in (404, 422) and alert_text(page.text).startswith(sentence)

    training = dash.client.get("/training").text
    assert 'href="/training/cycle-1"' in training and "Monitor alerts by kind" in training
    run = dash.client.get("/training/cycle-1").text
    assert "10 steps logged" in run and "learning rate by step" in run and 'class="marker"' in run
    assert dash.client.get("/training/nope").status_code == 404
    for path, what in (("/interactions/", "interaction"), ("/jobs/", "job")):  # past any integer column
        page = dash.client.get(path + "9" * 20)
        assert page.status_code == 404 and alert_text(page.text) == f"There is no {what} with id {'9' * 20}."
    assert dash.client.get("/versions/compare?a=v%00&b=v0002").status_code == 422
    assert alert_text(dash.client.get("/versions/nope").text).startswith("There is no model version 'nope'")
    for path in PAGES:
        assert dash.client.get(path).status_code == 200, path


def test_admin_submits_cancels_and_retries_jobs(dash, seeded):
    dash.sign_in("admin")
    assert "data-admin" in dash.client.get("/jobs").text
    for data, sentence in (({"type": "eval", "payload": "{oops"}, "The payload must be a JSON object"),
                           ({"type": "eval", "payload": '{"colour": 1}'}, "A 'eval' job has no payload field 'colour'"),
                           ({"type": "cycle", "priority": "high"},
                            "'priority' must be a whole number from -1000 to 1000")):
        page = dash.post("/jobs", data, page="/jobs")
        assert page.status_code == 422 and alert_text(page.text).startswith(sentence), data
    assert '{"colour": 1}' not in page.text and "{oops" not in page.text  # last form typed shows again
    response = dash.post("/jobs", {"type": "eval", "payload": '{"limit": 3}', "priority": "5"}, page="/jobs")
    assert response.status_code == 303
    job_id = int(re.match(r"/jobs/(\d+)\?done=submitted", response.headers["location"]).group(1))
    with dash.db.session() as session:
        job = session.get(Job, job_id)
        assert (job.type, job.payload, job.priority, job.status) == ("eval", {"limit": 3}, 5, "queued")
    rows = dash.client.get("/jobs/rows").text  # what the live refresh swaps in
    assert f'data-job="{job_id}"' in rows and "position 1 in the queue" in rows

    assert dash.post(f"/jobs/{job_id}/cancel", page="/jobs").headers["location"] == f"/jobs/{job_id}?done=cancelled"
    again = dash.post(f"/jobs/{job_id}/cancel", page="/jobs")
    assert again.status_code == 409 and "only queued or running jobs can be cancelled" in alert_text(again.text)
    assert dash.post(f"/jobs/{job_id}/retry", page="/jobs").status_code == 303
    with dash.db.session() as session:
        assert session.get(Job, job_id).status == "queued"
    page = dash.client.get(f"/jobs/{job_id}").text
    assert "queued (eval, priority 5, up to 3 attempts)" in page and 'http-equiv="refresh"' in page
    assert dash.client.get("/jobs/999").status_code == 404
    assert dash.client.get("/jobs?status=lost").status_code == 422


def test_rollback_and_activation_go_through_a_confirmation(dash, seeded):
    dash.sign_in("admin")
    with dash.db.session() as session:
        deployments = session.scalar(select(func.count()).select_from(Deployment))
    confirm = dash.client.get("/versions/rollback").text
    assert re.search(r'id="rollback-target"><a href="/versions/v0001">v0001</a>', confirm)
    with dash.db.session() as session:  # the preview changed nothing
        assert session.scalar(select(func.count()).select_from(Deployment)) == deployments
    assert active(dash.db) == "v0002" and dash.engine.refreshes == 0

    rolled = dash.post("/versions/rollback", page="/versions/rollback")
    assert rolled.headers["location"] == "/versions?done=rolled_back"
    assert active(dash.db) == "v0001" and dash.engine.refreshes == 1
    confirm = dash.client.get("/versions/rollback").text
    assert "no successful version older than v0001" in alert_text(confirm) and 'id="confirm-to-base"' in confirm
    refused = dash.post("/versions/rollback", page="/versions/rollback")
    assert refused.status_code == 409 and active(dash.db) == "v0001"
    assert dash.post("/versions/rollback", {"to_base": "yes"}, page="/versions/rollback").status_code == 303
    assert active(dash.db) is None  # the base model serves

    gate = dash.client.get("/versions/v0003/activate")
    assert "did not pass its evaluation gate" in alert_text(gate.text) and "confirm-activate" not in gate.text
    assert dash.post("/versions/v0003/activate", page="/versions").status_code == 409
    assert dash.client.get("/versions/v9/activate").status_code == 404
    assert 'id="confirm-activate"' in dash.client.get("/versions/v0002/activate").text
    response = dash.post("/versions/v0002/activate", page="/versions")
    assert response.headers["location"] == "/versions/v0002?done=activated" and active(dash.db) == "v0002"


def test_admin_resolves_an_alert(dash, seeded):
    dash.sign_in("admin")
    with dash.db.session() as session:
        alert_id = session.scalar(select(Alert.id))
    response = dash.post(f"/alerts/{alert_id}/resolve", {"next": "//evil.example/x"}, page="/training")
    assert response.headers["location"] == "/?done=resolved"
    with dash.db.session() as session:
        assert session.get(Alert, alert_id).resolved
    assert "None: nothing needs a person" in dash.client.get("/").text
    assert dash.post("/alerts/999/resolve", page="/training").status_code == 404

"""Signing in, what each key may see, the interaction pages and feedback, through the
ASGI app with a client that signs in through the form as a browser does."""

from __future__ import annotations

import re
import stat

from sqlalchemy import select

from selftrain.dashboard.session import COOKIE, SECRET_FILE, decode
from selftrain.serve.keys import ApiKey, revoke_key
from selftrain.store.schema import Feedback, Job, PreferencePair

from .conftest import CSRF, PAGES, alert_text, count, listed_ids


def test_pages_send_strangers_to_the_sign_in_form(dash):
    for path in PAGES:
        response = dash.client.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/login?next=%2F")
    assert dash.client.get("/interactions?q=x", follow_redirects=False).headers["location"] == \
        "/login?next=%2Finteractions%3Fq%3Dx"
    assert dash.client.post("/versions/rollback", data={}, follow_redirects=False).status_code == 303


def test_sign_in_sets_a_signed_httponly_samesite_cookie(dash, dash_workspace, seeded):
    token = dash.csrf("/login")
    bad = dash.client.post("/login", data={"csrf": token, "key": "st-nope"})
    assert bad.status_code == 401 and alert_text(bad.text) == "That API key is not valid or has been revoked."
    empty = dash.client.post("/login", data={"csrf": token, "key": " "})
    assert empty.status_code == 422 and "Paste an API key" in alert_text(empty.text)
    forged = dash.client.post("/login", data={"csrf": "forged", "key": seeded.keys.alice})
    assert forged.status_code == 403 and "did not come from this dashboard" in alert_text(forged.text)

    response = dash.client.post("/login", data={"csrf": token, "key": seeded.keys.alice, "next": "//evil.example"},
                                follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/"  # no open redirect
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    secret_path = dash_workspace / SECRET_FILE
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    session = decode(dash.client.cookies[COOKIE], bytes.fromhex(secret_path.read_text()))
    assert session.signed_in and session.csrf != token  # a fresh CSRF token after sign-in
    page = dash.client.get("/")
    assert page.status_code == 200 and 'id="who">alice<' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]

    assert dash.client.post("/logout", data={"csrf": "stale"}).status_code == 403  # sign-out needs the token too
    assert dash.post("/logout").headers["location"] == "/login?done=signed_out"
    assert dash.client.get("/", follow_redirects=False).status_code == 303


def test_a_revoked_key_ends_its_sessions(dash, seeded):
    dash.client.app.state.settings.serve_key_cache_s = 0.0  # no grace period, for the test
    dash.sign_in("alice")
    assert dash.client.get("/interactions", follow_redirects=False).status_code == 200
    with dash.db.session() as session:
        revoke_key(session, session.scalar(select(ApiKey.id).where(ApiKey.name == "alice")))
    assert dash.client.get("/interactions", follow_redirects=False).status_code == 303
    form = dash.client.get("/interactions")  # followed: the sign-in form, not a redirect loop
    assert form.status_code == 200 and 'id="sign-in"' in form.text


def test_a_user_sees_only_their_own_interactions(dash, seeded):
    dash.sign_in("alice")
    html = dash.client.get("/interactions?size=50&user=bob").text  # ?user= is for admins only
    assert set(listed_ids(html)) == set(seeded.alice_ids) and "bob wants" not in html
    assert listed_ids(dash.client.get("/interactions?q=parser").text) == []
    page = dash.client.get(f"/interactions/{seeded.bob_ids[0]}")
    assert page.status_code == 404 and alert_text(page.text) == f"There is no interaction with id {seeded.bob_ids[0]}."
    overview = dash.client.get("/").text
    assert "Your interactions" in overview and re.search(r'class="big">30<', overview)

    dash.sign_in("admin")
    assert set(listed_ids(dash.client.get("/interactions?q=parser").text)) == set(seeded.bob_ids)
    assert set(listed_ids(dash.client.get("/interactions?user=bob").text)) == set(seeded.bob_ids)
    assert re.search(r'class="big">35<', dash.client.get("/").text)


def test_a_user_key_gets_no_admin_control_and_no_admin_action(dash, seeded):
    dash.sign_in("alice")
    for path in PAGES:
        page = dash.client.get(path)
        assert page.status_code == 200, path
        assert "data-admin" not in page.text and "/cancel" not in page.text and "/resolve" not in page.text, path
    assert "Submit a job" not in dash.client.get("/jobs").text
    for path in ("/versions/rollback", "/versions/v0001/activate"):
        page = dash.client.get(path)
        assert page.status_code == 403 and "needs an admin key" in alert_text(page.text)
    jobs = count(dash.db, Job)
    for path, data in (("/versions/rollback", {}), ("/jobs", {"type": "cycle"}), ("/alerts/1/resolve", {}),
                       (f"/jobs/{seeded.job_ids['queued']}/cancel", {})):
        assert dash.post(path, data).status_code == 403, path
    assert dash.engine.stats()["version"] == "v0002" and dash.engine.refreshes == 0
    assert count(dash.db, Job) == jobs


def test_keyset_pages_walk_every_row_once(dash, seeded):
    dash.sign_in("alice")
    first = dash.client.get("/interactions")
    assert listed_ids(first.text) == sorted(seeded.alice_ids, reverse=True)[:25]
    older = re.search(r'href="/interactions\?(before=\d+)"', first.text).group(1)
    second = dash.client.get(f"/interactions?{older}")
    assert listed_ids(second.text) == sorted(seeded.alice_ids, reverse=True)[25:]
    assert 'rel="next"' not in second.text  # the oldest page
    newer = re.search(r'href="/interactions\?(after=\d+)"', second.text).group(1)
    assert listed_ids(dash.client.get(f"/interactions?{newer}").text) == listed_ids(first.text)


def test_search_filters_and_bad_parameters(dash, seeded):
    dash.sign_in("admin")
    assert listed_ids(dash.client.get("/interactions", params={"q": "SLUGIFY 7"}).text) == [seeded.alice_ids[7]]
    by_id = dash.client.get("/interactions", params={"q": f"#{seeded.bob_ids[2]}"})
    assert listed_ids(by_id.text) == [seeded.bob_ids[2]]
    assert listed_ids(dash.client.get("/interactions", params={"q": "100%_"}).text) == []  # LIKE wildcards are text
    assert listed_ids(dash.client.get("/interactions?feedback=accepted").text) == [seeded.alice_ids[0]]
    assert listed_ids(dash.client.get("/interactions?feedback=rejected").text) == [seeded.alice_ids[1]]
    assert len(listed_ids(dash.client.get("/interactions?feedback=none&size=100").text)) == 33
    assert set(listed_ids(dash.client.get("/interactions?version=base").text)) == set(seeded.bob_ids)
    assert len(listed_ids(dash.client.get("/interactions?version=v0001&size=50").text)) == 30
    for query, sentence in (("size=abc", "'size' must be a whole number from 1 to 100, got 'abc'."),
                            ("before=-3", "'before' must be a whole number"),
                            ("before=%C2%B2", "'before' must be a whole number"),
                            ("after=" + "9" * 5000, "'after' must be a whole number"),
                            ("version=v%00", "The address must not contain NUL characters."),
                            ("feedback=bogus",
                             "'feedback' must be one of: some, none, accepted, rejected, corrected.")):
        page = dash.client.get(f"/interactions?{query}")
        assert page.status_code == 422 and alert_text(page.text).startswith(sentence), query


def test_feedback_from_the_page_is_stored_as_the_api_stores_it(dash, seeded):
    dash.sign_in("alice")
    target = seeded.alice_ids[5]
    page = f"/interactions/{target}"
    before = count(dash.db, Feedback)
    for data, sentence in (({}, "Feedback needs at least one of"),
                           ({"accepted": "maybe"}, "'accepted' must be yes, no or left empty."),
                           ({"rating": "9", "comment": "keep me"}, "The rating must be a whole number from 1 to 5")):
        response = dash.post(f"{page}/feedback", data, page=page)
        assert response.status_code == 422 and alert_text(response.text).startswith(sentence)
    assert 'value="keep me"' in response.text  # what was typed stays in the form
    assert count(dash.db, Feedback) == before
    assert dash.client.post(f"{page}/feedback", data={"rating": "5"}).status_code == 403  # no CSRF token

    response = dash.post(f"{page}/feedback", {"rating": "5", "accepted": "yes", "comment": "great",
                                              "corrected_code": "def slugify(t):\n    return t.lower()\n"}, page=page)
    assert response.status_code == 303 and response.headers["location"] == f"{page}?done=feedback#feedback"
    with dash.db.session() as session:
        row = session.scalars(select(Feedback).where(Feedback.interaction_id == target)).one()
        assert (row.user, row.rating, row.accepted, row.comment) == ("alice", 5, True, "great")
        pair = session.scalars(select(PreferencePair).where(PreferencePair.interaction_id == target)).one()
        assert pair.source == "correction" and "lower()" in pair.chosen
    shown = dash.client.get(f"{page}?done=feedback").text
    assert "your feedback is saved" in shown and 'id="feedback-history"' in shown and "great" in shown
    assert dash.post(f"/interactions/{seeded.bob_ids[0]}/feedback", {"rating": "1"}).status_code == 404
    api = dash.client.get(f"/api/interactions/{target}", headers={"Authorization": f"Bearer {seeded.keys.alice}"})
    assert api.status_code == 200 and api.json()["feedback"]["rating"] == 5  # Bearer auth unchanged


def test_the_dashboard_stays_out_of_the_api_schema_and_its_errors(dash):
    paths = dash.client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if not p.startswith(("/api", "/v1", "/healthz", "/metrics"))]
    assert dash.client.get("/api/interactions").json()["error"]["type"] == "authentication_error"
    assert dash.client.get("/assets/dashboard.js").headers["content-type"].startswith("text/javascript")
    assert dash.client.get("/assets/nope.js").status_code == 404
    assert CSRF.search(dash.client.get("/login").text)

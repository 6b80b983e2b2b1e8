"""Supervision pages and API through the Flask client: who may see them, the numbers shown, CSV, violations, i18n."""
from __future__ import annotations

import re
from pathlib import Path

import time_machine
from babel.messages.pofile import read_po
from lxml import html

from engine import lights
from tests.engine.test_supervision import at, history, people  # noqa: F401,F811  (fixtures)
from tests.webui.conftest import PASSWORDS

CATALOG = Path(__file__).resolve().parents[2] / "webui" / "translations_supervision" / "zh" / "LC_MESSAGES" / "messages.po"
MORE_PASSWORDS = {**PASSWORDS, "supervisor": "super-pass-1", "swjlead": "swj-lead-1", "window2": "window-pass-2"}


def csrf(page: bytes) -> str:
    return re.search(rb'name="csrf_token" value="([^"]+)"', page).group(1).decode()


def login(client, username: str):
    response = client.post("/login", data={"username": username, "password": MORE_PASSWORDS[username],
                                           "csrf_token": csrf(client.get("/login").data)})
    assert response.status_code == 302, response.data


def token(client, username: str) -> dict:
    response = client.post("/api/token", json={"username": username, "password": MORE_PASSWORDS[username]})
    return {"Authorization": f"Bearer {response.json['token']}"}


def page(client, url: str, status: int = 200):
    response = client.get(url)
    assert response.status_code == status, (url, response.status_code, response.data[:400])
    return html.fromstring(response.data)


def test_only_supervisors_admins_and_leads_see_the_board(client, people):
    assert client.get("/supervision").status_code == 302            # anonymous → login
    login(client, "gaj1")
    assert client.get("/supervision").status_code == 403
    assert client.get("/supervision/board.json").status_code == 403
    assert client.get("/supervision/statistics").status_code == 403
    client.post("/logout", data={"csrf_token": csrf(client.get("/").data)})
    login(client, "swjlead")
    assert client.get("/supervision").status_code == 200
    assert client.get("/supervision/violations").status_code == 403   # leads: their board, not the violations
    assert client.get("/api/supervision/board", headers=token(client, "gaj1")).status_code == 403
    assert client.get("/api/supervision/board").status_code == 401
    assert client.get("/api/supervision/violations", headers=token(client, "swjlead")).status_code == 403


def test_board_shows_counts_colours_and_red_items_linking_to_the_case(client, db, people, history):
    with time_machine.travel(at("2026-11-26 10:00"), tick=False):
        lights.sweep_lights(db)
        login(client, "supervisor")
        doc = page(client, "/supervision")
        data = client.get("/supervision/board.json").json
    assert doc.xpath('string(//div[@data-kind="tasks"]//span[@data-light="red"]/span[@class="count"])') == "1"
    assert doc.xpath('string(//div[@data-kind="cases"]//span[@data-light="red"]/span[@class="count"])') == "1"
    rows = doc.xpath('//table[@id="board-red"]/tbody/tr[@class="red-item"]')
    assert {(r.get("data-kind"), r.get("data-case-id")) for r in rows} == {
        ("task", str(history["D"]["id"])), ("case", str(history["D"]["id"]))}
    assert rows[0].xpath("string(td[1]/a/@href)") == f"/cases/{history['D']['id']}"
    assert "公安局" in rows[0].text_content()
    assert data["red_total"] == {"tasks": 1, "cases": 1}
    assert doc.xpath('string(//table[@id="board-departments"]//tr[@data-department="gaj"]/td[@data-light="red"])') == "1"
    assert doc.xpath('//script[contains(@src, "dist/supervision.js")]')


def test_board_api_matches_the_page_json(client, db, people, history):
    with time_machine.travel(at("2026-11-26 10:00"), tick=False):
        lights.sweep_lights(db)
        api = client.get("/api/supervision/board", headers=token(client, "admin"))
    assert api.status_code == 200
    assert api.json["totals"]["cases"]["red"] == 1


def test_statistics_page_shows_the_figures_charts_and_tables(client, people, history):
    login(client, "supervisor")
    doc = page(client, "/supervision/statistics?start=2026-01-01&end=2026-12-31")
    figure = {r.get("data-figure"): r.xpath("string(td)").strip() for r in doc.xpath('//table[@id="figures"]//tr')}
    assert figure["received"] == "5" and figure["completed"] == "4"
    assert figure["on_time_rate"] == "75.0%" and figure["average_working_days"] == "3.0"
    assert figure["deemed_consents"] == "1" and figure["pauses"] == "1" and figure["send_backs"] == "1"
    assert len(doc.xpath('//div[@class="chart"]')) == 3
    assert doc.xpath('string(//table[@id="trend"]//tr[@data-month="2026-10"]/td[1])') == "1"
    assert doc.xpath('string(//table[@id="departments"]//tr[@data-department="swj"]/td[3])') == "4"
    assert doc.xpath('string(//table[@id="lights"]//tr[@data-light="red"]/td[1])') == "2"
    assert doc.xpath('//script[@id="stats-data"]')
    clerk = page(client, "/supervision/statistics?start=2026-01-01&end=2026-12-31&clerk=window2")
    assert clerk.xpath('string(//tr[@data-figure="received"]/td)') == "1"


def test_bad_filters_are_explained_not_a_stack_trace(client, people):
    login(client, "supervisor")
    response = client.get("/supervision/statistics?start=2026-02-30")
    assert response.status_code == 422
    doc = html.fromstring(response.data)
    assert doc.xpath('//span[@id="start-error"]')
    api = client.get("/api/supervision/statistics?start=2026-12-01&end=2026-01-01", headers=token(client, "admin"))
    assert api.status_code == 422 and api.json["errors"][0]["field"] == "end"
    assert client.get("/api/supervision/ranking?month=13-2026", headers=token(client, "admin")).status_code == 422
    assert client.get("/api/supervision/violations?kind=bogus", headers=token(client, "admin")).status_code == 422


def test_csv_export_opens_in_excel(client, people, history):
    login(client, "supervisor")
    response = client.get("/supervision/statistics.csv?start=2026-01-01&end=2026-12-31&department=gaj")
    assert response.status_code == 200
    assert response.mimetype == "text/csv" and "attachment" in response.headers["Content-Disposition"]
    assert response.data.startswith("\ufeff".encode())
    text = response.data.decode("utf-8-sig")
    assert "received,5" in text and "筛选 department,gaj" in text and "gaj,公安局,4,4,0,1.0,1" in text


def test_violations_are_listed_annotated_and_closed_on_the_pages(client, people, history):
    with time_machine.travel(at("2026-11-23 12:00"), tick=False):
        login(client, "supervisor")     # sessions dated in the future are refused, so log in "then"
        doc = page(client, "/supervision/violations?status=")
        rows = doc.xpath('//table[@id="violations"]/tbody/tr[@data-violation-id]')
        assert sorted(r.get("data-kind") for r in rows) == ["case_late", "deemed_consent", "step_late", "step_late"]
        deemed = next(r for r in rows if r.get("data-kind") == "deemed_consent").get("data-violation-id")
        detail = client.get(f"/supervision/violations/{deemed}")
        token_ = csrf(detail.data)
        empty = client.post(f"/supervision/violations/{deemed}/notes", data={"csrf_token": token_, "text": " "})
        assert empty.status_code == 422 and "write a note" in empty.data.decode()
        assert client.post(f"/supervision/violations/{deemed}/notes", data={"text": "x"}).status_code == 400
        noted = client.post(f"/supervision/violations/{deemed}/notes",
                            data={"csrf_token": token_, "text": "已约谈"}, follow_redirects=True)
        assert noted.status_code == 200 and "已约谈" in noted.data.decode()
        closed = client.post(f"/supervision/violations/{deemed}/close",
                             data={"csrf_token": token_, "text": "已整改"}, follow_redirects=True)
        doc = html.fromstring(closed.data)
        assert "supervisor" in doc.xpath('string(//dd[@id="violation-status"])')
        assert not doc.xpath('//button[@id="close-violation"]')
        assert [li.get("data-action") for li in doc.xpath('//ol[@id="notes"]/li')] == ["note", "close"]
        open_only = page(client, "/supervision/violations?status=open")
        assert len(open_only.xpath('//tr[@data-violation-id]')) == 3


def test_violations_api_annotates_and_closes(client, people, history):
    with time_machine.travel(at("2026-11-23 12:00"), tick=False):
        headers = token(client, "supervisor")
        listing = client.get("/api/supervision/violations?kind=case_late", headers=headers).json
        assert listing["total"] == 1
        vid = listing["items"][0]["id"]
        assert client.post(f"/api/supervision/violations/{vid}/notes", json={}, headers=headers).status_code == 422
        noted = client.post(f"/api/supervision/violations/{vid}/notes", json={"text": "约谈"}, headers=headers)
        assert noted.status_code == 201 and noted.json["notes"][0]["text"] == "约谈"
        closed = client.post(f"/api/supervision/violations/{vid}/close", json={"text": "已整改"}, headers=headers)
        assert closed.status_code == 200 and closed.json["status"] == "closed"
        again = client.post(f"/api/supervision/violations/{vid}/close", json={"text": "x"}, headers=headers)
        assert again.status_code == 409
        assert client.get("/api/supervision/violations/424242", headers=headers).status_code == 404


def test_ranking_page_flags_the_best(client, people, history):
    login(client, "supervisor")
    doc = page(client, "/supervision/ranking?month=2026-11")
    assert doc.xpath('string(//table[@id="ranking-windows"]//tr[@data-rank="1"]/th)') == "window2"
    assert doc.xpath('//table[@id="ranking-windows"]//tr[@class="red-flag"]')
    ranks = {r.xpath("string(th)"): r.get("data-rank") for r in doc.xpath('//table[@id="ranking-departments"]//tr[@data-rank]')}
    assert int(ranks["公安局"]) < int(ranks["税务局"])
    api = client.get("/api/supervision/ranking?month=2026-11", headers=token(client, "admin"))
    assert api.json["windows"][0]["clerk"] == "window2"


def test_pages_speak_english_on_request(client, people):
    login(client, "supervisor")
    assert "实时监察" in client.get("/supervision").data.decode()
    client.get("/language/en")
    english = client.get("/supervision").data.decode()
    assert "Electronic supervision: live board" in english and "实时监察" not in english


def test_every_supervision_message_is_translated():
    with CATALOG.open("rb") as handle:
        catalog = read_po(handle)
    untranslated = [m.id for m in catalog if m.id and not m.string]
    assert untranslated == []
    assert len([m for m in catalog if m.id]) > 80

"""The Chinese catalogs: every message translated, and no English text translated two ways across screen families."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from babel.messages.pofile import read_po

WEBUI = Path(__file__).resolve().parents[2] / "webui"


def catalogs():
    for folder in sorted(WEBUI.glob("translations*")):
        for po in folder.glob("*/LC_MESSAGES/messages.po"):
            with po.open("rb") as handle:
                yield po.relative_to(WEBUI), read_po(handle)


def test_every_message_has_a_chinese_translation():
    untranslated = {str(path): [m.id for m in catalog if m.id and not m.string]
                    for path, catalog in catalogs()}
    assert {k: v for k, v in untranslated.items() if v} == {}


def test_no_english_text_is_translated_two_ways():
    # Flask-Babel merges the folders; a text translated differently in two of them would show
    # whichever folder happens to load last.
    seen = defaultdict(dict)
    for path, catalog in catalogs():
        for message in catalog:
            if message.id and message.string:
                seen[message.id if isinstance(message.id, str) else message.id[0]][str(path.parts[0])] = \
                    message.string if isinstance(message.string, str) else message.string[0]
    clashes = {msgid: folders for msgid, folders in seen.items() if len(set(folders.values())) > 1}
    assert clashes == {}

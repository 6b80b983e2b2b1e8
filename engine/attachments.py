"""Case materials uploaded on a task page: type and size checks, safe names, sha256; fetched only by those who may see the case."""
from __future__ import annotations

import hashlib
import io
import re
import unicodedata
import zipfile
from dataclasses import dataclass

from sqlalchemy import select

from . import audit
from .accounts import User
from .casefile import may_view
from .errors import Conflict, InvalidInput, NotFound, PermissionDenied, Problem
from .projection import may_work_on
from .store import Database, attachment, human_task, process_definition, process_instance


@dataclass(frozen=True)
class FileType:
    name: str
    content_type: str
    extensions: tuple[str, ...]


# What a service centre receives: scans and photos, PDF and OFD (the national e-document format), and Office
# files. Generic ZIP archives are refused (their contents cannot be checked here) and so are macro-enabled
# Office files; legacy .doc/.xls are accepted because many official forms still come in them.
PDF = FileType("PDF", "application/pdf", ("pdf",))
PNG = FileType("PNG", "image/png", ("png",))
JPEG = FileType("JPEG", "image/jpeg", ("jpg", "jpeg"))
OFD = FileType("OFD", "application/ofd", ("ofd",))
DOCX = FileType("Word", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", ("docx",))
XLSX = FileType("Excel", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", ("xlsx",))
DOC = FileType("Word 97-2003", "application/msword", ("doc",))
XLS = FileType("Excel 97-2003", "application/vnd.ms-excel", ("xls",))
FILE_TYPES = (PDF, PNG, JPEG, OFD, DOCX, XLSX, DOC, XLS)
ALLOWED_EXTENSIONS = tuple(ext for t in FILE_TYPES for ext in t.extensions)

_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP = b"PK\x03\x04"
_MAX_NAME = 120
_UNSAFE = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')
_CONTENT_TYPES_LIMIT = 256 * 1024


def check_file(filename: str, data: bytes, max_bytes: int,
               allowed: tuple[str, ...] = ALLOWED_EXTENSIONS) -> tuple[str, FileType]:
    """(safe filename, type) of an upload, or InvalidInput on field `file` saying what is wrong with it."""
    name = safe_filename(filename)
    extension = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if not data:
        raise InvalidInput(Problem("the file is empty", field="file"))
    if len(data) > max_bytes:
        raise InvalidInput(Problem(f"the file is {len(data)} bytes; the limit is {max_bytes} bytes", field="file"))
    if extension not in allowed:
        raise InvalidInput(Problem(f"files of type .{extension or '?'} are not accepted; accepted are "
                                   f"{', '.join('.' + e for e in allowed)}", field="file"))
    sniffed = sniff(data)
    if sniffed is None or extension not in sniffed.extensions:
        found = f"a {sniffed.name} file" if sniffed else "not a file of any accepted type"
        raise InvalidInput(Problem(f"the file is named .{extension} but its content is {found}", field="file"))
    return name, sniffed


def sniff(data: bytes) -> FileType | None:
    """The accepted type the content really is, from its leading bytes (and a ZIP's directory)."""
    if data.startswith(b"%PDF-"):
        return PDF
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if data.startswith(b"\xff\xd8\xff"):
        return JPEG
    if data.startswith(_OLE2):
        # Word and Excel 97-2003 share one container; its stream names (UTF-16) tell them apart.
        if _utf16("_VBA_PROJECT") in data or _utf16("Macros") in data:
            return None
        if _utf16("WordDocument") in data:
            return DOC
        if _utf16("Workbook") in data or _utf16("Book") in data:
            return XLS
        return None
    if data.startswith(_ZIP):
        return _sniff_zip(data)
    return None


def _utf16(name: str) -> bytes:
    return name.encode("utf-16-le")


def _sniff_zip(data: bytes) -> FileType | None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = set(archive.namelist())
            if "OFD.xml" in names:
                return OFD
            if "[Content_Types].xml" not in names:
                return None
            info = archive.getinfo("[Content_Types].xml")
            if info.file_size > _CONTENT_TYPES_LIMIT:
                return None
            declared = archive.read(info).decode("utf-8", "replace")
    except (zipfile.BadZipFile, KeyError, RuntimeError, NotImplementedError, OSError):
        return None
    if "macroEnabled" in declared or any(n.lower().endswith("vbaproject.bin") for n in names):
        return None
    if "wordprocessingml.document.main" in declared:
        return DOCX
    if "spreadsheetml.sheet.main" in declared:
        return XLSX
    return None


def safe_filename(filename: str) -> str:
    """The last path component, NFC, without control or reserved characters, at most 120 characters."""
    name = unicodedata.normalize("NFC", str(filename or "")).replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE.sub("_", name).strip().lstrip(".").strip()
    if "." in name:
        stem, extension = name.rsplit(".", 1)
        extension = extension[:10]
        name = stem[:_MAX_NAME - len(extension) - 1].rstrip() + "." + extension
    else:
        name = name[:_MAX_NAME]
    return name if name.strip("._ ") else "file"


def store(db: Database, task_id: int, user: User, filename: str, data: bytes,
          material_key: str | None = None) -> dict:
    """Attach a file to the task's case, optionally as one of the flow's listed materials.

    Only someone who may work on the open task (and it is not claimed by another) may add to it.
    """
    material_key = (material_key or "").strip() or None
    name, kind = check_file(filename, data, db.config.max_upload_bytes)
    digest = hashlib.sha256(data).hexdigest()

    def insert(conn):
        task = conn.execute(select(human_task.c.instance_id, human_task.c.status, human_task.c.assignee,
                                   human_task.c.departments, process_definition.c.guide)
                            .join(process_instance, process_instance.c.id == human_task.c.instance_id)
                            .join(process_definition, process_definition.c.id == process_instance.c.definition_id)
                            .where(human_task.c.id == task_id)).mappings().first()
        if task is None:
            raise NotFound(f"no task {task_id}")
        if not may_work_on(user, task):
            raise PermissionDenied(f"task {task_id} is not one of your departments' tasks")
        if task["status"] != "open":
            raise Conflict(f"task {task_id} is already {task['status']}")
        if task["assignee"] not in (None, user.username):
            raise Conflict(f"task {task_id} is claimed by {task['assignee']}")
        if material_key is not None and material_key not in material_keys(task["guide"]):
            raise InvalidInput(Problem("choose one of the materials the service guide lists", field="material_key"))
        now = db.config.now()
        attachment_id = conn.execute(attachment.insert().values(
            instance_id=task["instance_id"], task_id=task_id, material_key=material_key, filename=name,
            content_type=kind.content_type, size=len(data), sha256=digest, content=data,
            uploaded_by=user.username, uploaded_at=now)).inserted_primary_key[0]
        audit.record(conn, now, user.username, "attachment_added", task["instance_id"], task_id,
                     {"attachment_id": attachment_id, "filename": name, "size": len(data), "sha256": digest,
                      "material_key": material_key})
        return {"id": attachment_id, "instance_id": task["instance_id"], "filename": name,
                "content_type": kind.content_type, "size": len(data), "sha256": digest}

    return db.run(insert)


def material_keys(guide: dict | None) -> dict[str, str]:
    """Every material the flow's service guide lists (any item: the window takes them all in), key -> name."""
    return {m["key"]: m["name"] for item in (guide or {}).get("items", []) for m in item.get("materials") or []}


def fetch(db: Database, attachment_id: int, user: User) -> dict:
    """One file with its content, for those who may see its case (NotFound otherwise, so ids reveal nothing)."""
    with db.read() as conn:
        row = conn.execute(select(attachment).where(attachment.c.id == attachment_id)).mappings().first()
        if row is None:
            raise NotFound(f"no file {attachment_id}")
        started_by = conn.execute(select(process_instance.c.started_by)
                                  .where(process_instance.c.id == row["instance_id"])).scalar()
        tasks = conn.execute(select(human_task.c.assignee, human_task.c.departments, human_task.c.completed_by,
                                    human_task.c.delegated_from)
                             .where(human_task.c.instance_id == row["instance_id"])).mappings().all()
    if not may_view(user, started_by, tasks):
        raise NotFound(f"no file {attachment_id}")
    return dict(row)

"""The OpenAPI 3.0 description of the REST API, kept as Python data next to the views it describes."""
from __future__ import annotations

from engine.accounts import ROLES


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(name: str) -> dict:
    return {"$ref": f"#/components/responses/{name}"}


def _string(nullable: bool = False, **extra) -> dict:
    return {"type": "string", **({"nullable": True} if nullable else {}), **extra}


def _integer(nullable: bool = False, **extra) -> dict:
    return {"type": "integer", **({"nullable": True} if nullable else {}), **extra}


def _object(properties: dict, required: list[str] | None = None, **extra) -> dict:
    schema = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = required
    return schema


def _op(op_id: str, summary: str, responses: dict, *, tag: str, body: dict | None = None,
        public: bool = False, parameters: list | None = None, description: str | None = None) -> dict:
    operation = {"operationId": op_id, "summary": summary, "tags": [tag], "responses": {}}
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = parameters
    if body:
        operation["requestBody"] = body
    if public:
        operation["security"] = []
    else:
        responses = {**responses, "401": _error("Unauthorized")}
    operation["responses"] = {**responses, "500": _error("InternalError")}
    return operation


def _json_body(schema: dict, required: bool = True) -> dict:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _path_id(name: str, what: str) -> dict:
    return {"name": name, "in": "path", "required": True, "description": what, "schema": {"type": "integer"}}


_TIME = _string(True, format="date-time")
_LIGHT = _string(True, enum=["green", "yellow", "red", None],
                 description="supervision light; null once the task or case is closed")

SCHEMAS = {
    "Error": _object({"error": _string(description="what went wrong, safe to show to the user")}, ["error"]),
    "FileProblem": _object({
        "file": _string(True, description="uploaded file name"),
        "element_id": _string(True, description="id of the BPMN element at fault"),
        "line": _integer(True, description="line in the file"),
        "message": _string(),
    }, ["file", "element_id", "line", "message"]),
    "FieldProblem": _object({
        "field": _string(description="request or form field at fault"),
        "message": _string(),
    }, ["field", "message"]),
    "ValidationError": _object({
        "error": _string(description="all problems in one sentence"),
        "errors": {"type": "array", "items": {"oneOf": [_ref("FileProblem"), _ref("FieldProblem")]},
                   "description": "every problem found: located in a file for deployments, "
                                  "in a field for request bodies and task forms"},
    }, ["error", "errors"]),
    "TokenRequest": _object({"username": _string(), "password": _string(format="password")},
                            ["username", "password"]),
    "Token": _object({
        "token": _string(description="send as 'Authorization: Bearer <token>'"),
        "token_type": _string(enum=["Bearer"]),
        "expires_in": _integer(description="seconds until the token expires"),
    }, ["token", "token_type", "expires_in"]),
    "User": _object({
        "id": _integer(), "username": _string(), "name": _string(),
        "roles": {"type": "array", "items": _string(enum=list(ROLES))},
        "departments": {"type": "array", "items": _string()},
    }, ["id", "username", "name", "roles", "departments"]),
    "NewUser": _object({
        "username": _string(pattern="^[A-Za-z0-9_.-]{1,64}$"),
        "password": _string(format="password", minLength=8),
        "name": _string(description="display name; defaults to the username"),
        "departments": {"type": "array", "items": _string(), "description": "department keys"},
        "roles": {"type": "array", "items": _string(enum=list(ROLES)), "description": "defaults to [clerk]"},
    }, ["username", "password"]),
    "Department": _object({"key": _string(pattern="^[A-Za-z0-9_.-]{1,64}$"), "name": _string()},
                          ["key", "name"]),
    "DepartmentList": _object({"departments": {"type": "array", "items": _ref("Department")}}, ["departments"]),
    "DeploymentUpload": _object({
        "file": {"type": "array", "items": _string(format="binary"),
                 "description": "BPMN diagrams (.bpmn, .bpmn20.xml, .xml); a .yaml/.yml/.toml file whose "
                                "name stem equals a diagram's is that diagram's service guide"},
    }, ["file"]),
    "DeployedVersion": _object({
        "id": _integer(), "key": _string(), "version": _integer(), "name": _string(True),
        "created": {"type": "boolean", "description": "false when the file equals the latest version"},
        "warnings": {"type": "array", "description": "user tasks whose lane or candidate group names no "
                     "department yet (deployed all the same; no clerk sees them until it exists)",
                     "items": _object({"file": _string(), "element_id": _string(), "line": _integer(),
                                       "department": _string(), "message": _string()},
                                      ["file", "element_id", "department", "message"])},
    }, ["id", "key", "version", "name", "created", "warnings"]),
    "DeploymentResult": _object({"deployments": {"type": "array", "items": _ref("DeployedVersion")}},
                                ["deployments"]),
    "Process": _object({
        "id": _integer(description="id of the latest version"), "key": _string(), "name": _string(True),
        "version": _integer(description="latest version"), "versions": _integer(),
        "deployed_at": _TIME, "deployed_by": _string(True), "status": _string(),
    }, ["id", "key", "version", "versions"]),
    "ProcessList": _object({"processes": {"type": "array", "items": _ref("Process")}}, ["processes"]),
    "StartCase": _object({"data": {"type": "object", "additionalProperties": True,
                                   "description": "application data; applicant / enterprise_name names the applicant"}}),
    "CaseStarted": _object({
        "id": _integer(), "case_no": _string(description="yyyyMMdd + daily sequence"),
        "status": _string(enum=["running", "completed", "terminated", "suspended"]),
        "version": _integer(), "process_key": _string(),
    }, ["id", "case_no", "status", "version", "process_key"]),
    "Task": _object({
        "id": _integer(), "name": _string(True), "bpmn_id": _string(), "instance_id": _integer(),
        "case_no": _string(), "applicant": _string(True), "process_key": _string(), "version": _integer(),
        "departments": {"type": "array", "items": _string()}, "assignee": _string(True),
        "status": _string(enum=["open", "completed", "cancelled", "sent_back", "removed"]),
        "created_at": _TIME, "due_at": _TIME,
        "completed_at": _TIME, "completed_by": _string(True), "light": _LIGHT,
    }, ["id", "name", "bpmn_id", "instance_id", "case_no", "departments", "assignee", "status", "due_at", "light"]),
    "TaskList": _object({"tasks": {"type": "array", "items": _ref("Task")},
                         "limit": _integer(), "offset": _integer()}, ["tasks", "limit", "offset"]),
    "FormField": _object({
        "id": _string(), "label": _string(), "type": _string(enum=["string", "long", "boolean", "date", "enum"]),
        "default": {"description": "default value, of the field's type"}, "required": {"type": "boolean"}, "readonly": {"type": "boolean"},
        "constraints": {"type": "object", "additionalProperties": True},
        "properties": {"type": "object", "additionalProperties": True},
        "options": {"type": "array", "items": _object({"id": _string(), "name": _string()})},
    }, ["id", "label", "type", "required", "readonly"]),
    "TaskDetail": {"allOf": [_ref("Task"), _object({
        "form": {"type": "array", "items": _ref("FormField")},
        "guide_item": {"type": "object", "nullable": True, "additionalProperties": True,
                       "description": "the service-guide entry for this task, when the diagram has a guide"},
    }, ["form", "guide_item"])]},
    "Event": _object({
        "id": _integer(), "at": _string(format="date-time"), "actor": _string(True), "type": _string(),
        "instance_id": _integer(True), "task_id": _integer(True),
        "data": {"type": "object", "additionalProperties": True},
    }, ["id", "at", "actor", "type", "data"]),
    "Instance": _object({
        "id": _integer(), "case_no": _string(),
        "status": _string(enum=["running", "completed", "terminated", "suspended"]),
        "process_key": _string(), "version": _integer(), "applicant": _string(True),
        "started_by": _string(True), "started_at": _TIME, "ended_at": _TIME, "due_at": _TIME, "light": _LIGHT,
        "tasks": {"type": "array", "items": _ref("Task")},
        "events": {"type": "array", "items": _ref("Event")},
    }, ["id", "case_no", "status", "process_key", "version", "tasks", "events"]),
    "CompleteTask": _object({"data": {"type": "object", "additionalProperties": True,
                                      "description": "form values keyed by form field id"},
                             "opinion": _string(description="the reviewer's opinion (审查意见), kept in the audit trail")}),
    "AddCountersigner": _object({
        "department": _string(description="key of a department (GET /api/departments) without a copy yet"),
        "reason": _string(description="why the department is added; kept in the audit trail"),
    }, ["department", "reason"]),
    "RemoveCountersigner": _object({
        "reason": _string(description="why the copy is removed; kept in the audit trail"),
    }, ["reason"]),
    "CountersignerAdded": _object({
        "task_id": _integer(description="the copy the request named"), "instance_id": _integer(),
        "department": _string(), "new_task_id": _integer(description="the new department's copy"),
        "event": _string(enum=["countersigner_added"]),
    }, ["task_id", "instance_id", "department", "new_task_id", "event"]),
    "TaskActionResult": _object({
        "task_id": _integer(), "instance_id": _integer(),
        "case_status": _string(enum=["running", "completed", "terminated", "suspended"]),
    }, ["task_id", "instance_id", "case_status"]),
}

RESPONSES = {
    "BadRequest": _json(_ref("Error"), "the request body is not valid JSON"),
    "Unauthorized": _json(_ref("Error"), "no bearer token, or an expired or invalid one"),
    "Forbidden": _json(_ref("Error"), "the user lacks the role or department this needs"),
    "NotFound": _json(_ref("Error"), "no such resource"),
    "Conflict": _json(_ref("Error"), "the resource is in a state that forbids this, e.g. a colleague holds the task"),
    "TooLarge": _json(_ref("Error"), "the request is larger than the upload limit"),
    "Invalid": _json(_ref("ValidationError"), "the input is invalid; `errors` lists every problem"),
    "InternalError": _json(_object({"error": _string(), "reference": _string()}, ["error", "reference"]),
                           "unexpected server error; quote the reference to the administrator"),
}

_TASK_ID = _path_id("task_id", "human task id")
_TASK_ACTION_ERRORS = {"403": _error("Forbidden"), "404": _error("NotFound"), "409": _error("Conflict")}


def _task_action(op_id: str, summary: str, description: str, body: dict | None = None) -> dict:
    responses = {"200": _json(_ref("TaskActionResult"), "done"), **_TASK_ACTION_ERRORS}
    if body:
        responses.update({"400": _error("BadRequest"), "422": _error("Invalid")})
    return {"post": _op(op_id, summary, responses, tag="tasks", body=body, parameters=[_TASK_ID],
                        description=description)}


PATHS = {
    "/api/openapi.json": {"get": _op("getOpenApi", "This document", {
        "200": _json({"type": "object"}, "the OpenAPI 3.0 document")}, tag="meta", public=True)},
    "/api/token": {"post": _op("createToken", "Exchange username and password for a bearer token", {
        "200": _json(_ref("Token"), "a token"),
        "400": _error("BadRequest"),
        "401": _json(_ref("Error"), "wrong username or password (the same answer for an unknown user)"),
        "422": _error("Invalid"),
    }, tag="auth", body=_json_body(_ref("TokenRequest")), public=True)},
    "/api/me": {"get": _op("getMe", "The user the token belongs to", {
        "200": _json(_ref("User"), "the current user")}, tag="auth")},
    "/api/departments": {
        "get": _op("listDepartments", "All departments", {
            "200": _json(_ref("DepartmentList"), "departments by key")}, tag="admin"),
        "post": _op("createDepartment", "Create a department (admin)", {
            "201": _json(_ref("Department"), "created"), "400": _error("BadRequest"),
            "403": _error("Forbidden"), "409": _error("Conflict"), "422": _error("Invalid"),
        }, tag="admin", body=_json_body(_ref("Department"))),
    },
    "/api/users": {"post": _op("createUser", "Create a user (admin); the password is stored only as a hash", {
        "201": _json(_ref("User"), "created"), "400": _error("BadRequest"), "403": _error("Forbidden"),
        "409": _error("Conflict"), "422": _error("Invalid"),
    }, tag="admin", body=_json_body(_ref("NewUser")))},
    "/api/deployments": {"post": _op("createDeployment", "Deploy BPMN diagrams (designer or admin)", {
        "200": _json(_ref("DeploymentResult"), "every file equals its latest version; nothing new was stored"),
        "201": _json(_ref("DeploymentResult"), "at least one new version was stored"),
        "403": _error("Forbidden"), "413": _error("TooLarge"),
        "422": _error("Invalid"),
    }, tag="deployments", description=(
        "All files are validated together; when any is invalid nothing is stored and 422 lists the "
        "problems with file, element_id and line. XML with a DOCTYPE (XXE, billion laughs) is refused."),
        body={"required": True, "content": {"multipart/form-data": {
            "schema": _ref("DeploymentUpload"), "encoding": {"file": {"contentType": "application/octet-stream"}},
        }}})},
    "/api/processes": {"get": _op("listProcesses", "Deployed processes with their latest version", {
        "200": _json(_ref("ProcessList"), "processes by key")}, tag="processes")},
    "/api/processes/{key}/instances": {"post": _op("startCase", "Start a case on the latest version (window or admin)", {
        "201": {**_json(_ref("CaseStarted"), "started"),
                "headers": {"Location": {"schema": {"type": "string"}, "description": "the case's URL"}}},
        "400": _error("BadRequest"), "403": _error("Forbidden"), "404": _error("NotFound"),
        "422": _error("Invalid"),
    }, tag="cases", body=_json_body(_ref("StartCase"), required=False), parameters=[
        {"name": "key", "in": "path", "required": True, "description": "process key (the BPMN process id)",
         "schema": {"type": "string"}}])},
    "/api/instances/{instance_id}": {"get": _op("getInstance", "One case with its tasks and events", {
        "200": _json(_ref("Instance"), "the case"), "403": _error("Forbidden"), "404": _error("NotFound"),
    }, tag="cases", parameters=[_path_id("instance_id", "case id")], description=(
        "Window, supervisor and admin users see every case; other users see cases they started or "
        "that have (or had) a task for their departments or held by them."))},
    "/api/tasks": {"get": _op("listTasks", "My open work: my departments' unclaimed tasks and the tasks I hold", {
        "200": _json(_ref("TaskList"), "tasks, soonest due first"), "422": _error("Invalid"),
    }, tag="tasks", parameters=[
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100}},
        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}},
    ])},
    "/api/tasks/{task_id}": {"get": _op("getTask", "One task with its form and service-guide entry", {
        "200": _json(_ref("TaskDetail"), "the task"), "403": _error("Forbidden"), "404": _error("NotFound"),
    }, tag="tasks", parameters=[_TASK_ID])},
    "/api/tasks/{task_id}/claim": _task_action(
        "claimTask", "Claim a task", "409 when a colleague holds it; 403 outside your departments."),
    "/api/tasks/{task_id}/unclaim": _task_action(
        "unclaimTask", "Give a claimed task back to the department queue",
        "Only the holder may unclaim, or a lead or admin user."),
    "/api/tasks/{task_id}/complete": _task_action(
        "completeTask", "Complete a task with its form data",
        "422 lists every invalid form field as {field, message}; an unclaimed task is claimed by whoever "
        "completes it.", body=_json_body(_ref("CompleteTask"), required=False)),
}

_INSTANCE_ID = _path_id("instance_id", "case id")
_DAY = {"name": "day", "in": "path", "required": True, "schema": {"type": "string", "format": "date"}}
_DEADLINE = _object({"deadline": _string(format="date-time"), "provisional": {"type": "boolean"}},
                    ["deadline", "provisional"])
_DAY_INFO = _object({"date": _string(format="date"), "workday": {"type": "boolean"},
                     "holiday_name": _string(True), "provisional": {"type": "boolean"}},
                    ["date", "workday", "holiday_name", "provisional"])
_EXTEND = _json_body(_object({"workdays": _integer(minimum=1, maximum=60), "reason": _string()},
                             ["workdays", "reason"]))
_CHANGE_ERRORS = {"403": _error("Forbidden"), "404": _error("NotFound"), "409": _error("Conflict"),
                  "422": _error("Invalid")}

PATHS.update({
    "/api/calendar": {"get": _op("getCalendar", "Years the working-day calendar covers, office hours", {
        "200": _json({"type": "object"}, "covered_years (package + loaded), loaded_years, office_hours")},
        tag="calendar")},
    "/api/calendar/deadline": {"get": _op(
        "getDeadline", "Deadline of a limit in working days or hours on the calendar in force", {
            "200": _json(_DEADLINE, "the deadline; provisional when it relies on an unloaded year"),
            "422": _error("Invalid")}, tag="calendar", parameters=[
            {"name": "start", "in": "query", "required": True, "schema": _string(format="date-time")},
            {"name": "workdays", "in": "query", "schema": {"type": "integer", "minimum": 0}},
            {"name": "workhours", "in": "query", "schema": {"type": "number", "minimum": 0}}],
        description="Working days end at close of business of the N-th working day after the start day; "
                    "working hours count office hours from the start moment.")},
    "/api/calendar/days/{day}": {
        "get": _op("getCalendarDay", "Whether a day is a working day (holidays and 调休 included)", {
            "200": _json(_DAY_INFO, "the day"), "422": _error("Invalid")}, tag="calendar", parameters=[_DAY]),
        "put": _op("setCalendarDay", "Local adjustment of one day (admin)", {
            "200": _json(_DAY_INFO, "the day as now counted"), "403": _error("Forbidden"), "422": _error("Invalid")},
            tag="calendar", parameters=[_DAY], body=_json_body(_object({
                "workday": {"type": "boolean"}, "holiday_name": _string(True), "note": _string(True)},
                ["workday"]))),
    },
    "/api/calendar/schedules": {"post": _op(
        "loadSchedule", "Load a year's State Council schedule (admin): YAML as multipart `file` or JSON `schedule`", {
            "201": _json(_object({"year": _integer(), "holidays": _integer(), "workdays": _integer()}), "loaded"),
            "403": _error("Forbidden"), "422": _error("Invalid")}, tag="calendar",
        body={"required": True, "content": {
            "application/json": {"schema": _object({"schedule": _string()}, ["schedule"])},
            "multipart/form-data": {"schema": _object({"file": _string(format="binary")}, ["file"])}}},
        description="YAML: `year: 2027`, `holidays:` (dates or {from, to, name}), `workdays:` (调休 days).")},
    "/api/instances/{instance_id}/pause": {"post": _op(
        "pauseCase", "Stop the case clock for 补正 or a 特别程序 (window, lead, supervisor, admin)", {
            "200": _json({"type": "object"}, "paused"), **_CHANGE_ERRORS}, tag="cases", parameters=[_INSTANCE_ID],
        body=_json_body(_object({"kind": _string(), "reason": _string(), "expected_workdays": _integer(True)},
                                ["kind", "reason"])))},
    "/api/instances/{instance_id}/resume": {"post": _op(
        "resumeCase", "Restart the clock; pending deadlines move by the paused working time", {
            "200": _json({"type": "object"}, "resumed"), **_CHANGE_ERRORS}, tag="cases", parameters=[_INSTANCE_ID])},
    "/api/instances/{instance_id}/extend": {"post": _op(
        "extendCase", "延期: extend the case's committed limit once, before it expires (lead, supervisor, admin)", {
            "200": _json({"type": "object"}, "extended"), **_CHANGE_ERRORS}, tag="cases",
        parameters=[_INSTANCE_ID], body=_EXTEND)},
    "/api/tasks/{task_id}/countersigners": {"post": _op(
        "addCountersigner", "加签: give another department its own copy of this task's countersign", {
            "201": _json(_ref("CountersignerAdded"), "added; Location names the new copy"),
            "400": _error("BadRequest"), "422": _error("Invalid"), **_TASK_ACTION_ERRORS}, tag="tasks",
        parameters=[_TASK_ID], body=_json_body(_ref("AddCountersigner")),
        description="task_id is any open copy of a countersign (a parallel multi-instance step whose candidate "
                    "group is its element variable). A lead of a department holding a copy, a supervisor or an "
                    "admin may add; 409 when the task is not a countersign; 422 names `department` (unknown, "
                    "or already holding an open or signed copy) and `reason`.")},
    "/api/tasks/{task_id}/countersigners/remove": {"post": _op(
        "removeCountersigner", "减签: take this open copy away from its countersign", {
            "200": _json(_ref("TaskActionResult"), "removed; the copy's status is `removed`"),
            "400": _error("BadRequest"), "422": _error("Invalid"), **_TASK_ACTION_ERRORS}, tag="tasks",
        parameters=[_TASK_ID], body=_json_body(_ref("RemoveCountersigner")),
        description="Same permission as adding. 409 for a signed copy, the last copy, or a task that is not a "
                    "countersign. When every copy left is signed (or the completion condition holds) the "
                    "countersign finishes and the case moves on.")},
    "/api/tasks/{task_id}/extend": {"post": _op(
        "extendTask", "延期: extend a task's limit once, before it expires (lead, supervisor, admin)", {
            "200": _json({"type": "object"}, "extended"), **_CHANGE_ERRORS}, tag="tasks",
        parameters=[_TASK_ID], body=_EXTEND)},
})


def document() -> dict:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "并联审批 approvals API",
            "version": "1.0.0",
            "description": "Deploy BPMN flows, start cases and work their tasks. Authenticate with "
                           "POST /api/token, then send 'Authorization: Bearer <token>'.",
        },
        "tags": [{"name": name} for name in ("auth", "admin", "deployments", "processes", "cases", "tasks", "calendar", "meta")],
        "security": [{"bearerAuth": []}],
        "paths": PATHS,
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": SCHEMAS,
            "responses": RESPONSES,
        },
    }


from . import openapi_designer  # noqa: E402,F401  (appends the designer/admin paths)
from . import openapi_supervision  # noqa: E402,F401  (appends the supervision paths)

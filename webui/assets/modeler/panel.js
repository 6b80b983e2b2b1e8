// Our own properties-panel group "审批设置" where Camunda's entries do not reach: the department of a
// task or lane, the time limit as a boundary timer (workdays/workhours, deemed consent or escalation),
// the yellow threshold, and the flow's committed/statutory limits (camunda:properties).
import { SelectEntry, TextFieldEntry, isSelectEntryEdited, isTextFieldEntryEdited } from "@bpmn-io/properties-panel";
import { useService } from "bpmn-js-properties-panel";
import { getBusinessObject, is } from "bpmn-js/lib/util/ModelUtil";
import { laneOf } from "./lint";

const LIMIT = /^\s*(workdays|workhours)\(\s*(\d+(?:\.\d+)?)\s*\)\s*$/;

function timerOf(element) {
  return (element.attachers || []).find((a) => is(a, "bpmn:BoundaryEvent") &&
    (getBusinessObject(a).eventDefinitions || []).some((d) => is(d, "bpmn:TimerEventDefinition")));
}

function timerDefinition(boundary) {
  return getBusinessObject(boundary).eventDefinitions.find((d) => is(d, "bpmn:TimerEventDefinition"));
}

/** The task's limit as { amount, unit, kind }; kind is "none", "deemed" or "escalation". */
export function readLimit(element) {
  const boundary = timerOf(element);
  if (!boundary) return { amount: "", unit: "workdays", kind: "none" };
  const definition = timerDefinition(boundary);
  const expression = definition.timeDuration || definition.timeDate || definition.timeCycle;
  const match = LIMIT.exec((expression && expression.body) || "");
  return {
    amount: match ? match[2] : ((expression && expression.body) || ""),
    unit: match ? match[1] : "workdays",
    kind: getBusinessObject(boundary).cancelActivity === false ? "escalation" : "deemed",
  };
}

function writeLimit(element, wanted, services) {
  const { modeling, bpmnFactory, commandStack, translate } = services;
  const current = readLimit(element);
  const next = { ...current, ...wanted };
  let boundary = timerOf(element);
  if (next.kind === "none") {
    if (boundary) modeling.removeElements([boundary]);
    return;
  }
  if (!boundary) {
    boundary = modeling.createShape(
      { type: "bpmn:BoundaryEvent", eventDefinitionType: "bpmn:TimerEventDefinition" },
      { x: element.x + element.width - 18, y: element.y + element.height }, element, { attach: true });
  }
  const body = next.amount === "" ? "" : `${next.unit}(${next.amount})`;
  const interrupting = next.kind === "deemed";
  commandStack.execute("properties-panel.multi-command-executor", [
    { cmd: "element.updateModdleProperties",
      context: { element: boundary, moddleElement: timerDefinition(boundary),
                 properties: { timeDuration: bpmnFactory.create("bpmn:FormalExpression", { body }),
                               timeDate: undefined, timeCycle: undefined } } },
    { cmd: "element.updateProperties",
      context: { element: boundary,
                 properties: { cancelActivity: interrupting,
                               name: translate(interrupting ? "Deemed consent" : "Urge") } } },
  ]);
}

function propertyOwner(element) {
  const bo = getBusinessObject(element);
  return is(element, "bpmn:Participant") ? bo.get("processRef") : bo;
}

export function readProperty(element, name) {
  const owner = propertyOwner(element);
  const values = (owner && owner.extensionElements && owner.extensionElements.values) || [];
  for (const ext of values.filter((v) => is(v, "camunda:Properties"))) {
    const found = (ext.values || []).find((p) => p.name === name);
    if (found) return found.value || "";
  }
  return "";
}

function writeProperty(element, name, value, { bpmnFactory, commandStack }) {
  const owner = propertyOwner(element);
  const commands = [];
  let ext = owner.get("extensionElements");
  if (!ext) {
    ext = bpmnFactory.create("bpmn:ExtensionElements", { values: [] });
    ext.$parent = owner;
    commands.push({ cmd: "element.updateModdleProperties",
                    context: { element, moddleElement: owner, properties: { extensionElements: ext } } });
  }
  let props = ext.get("values").find((v) => is(v, "camunda:Properties"));
  if (!props) {
    props = bpmnFactory.create("camunda:Properties", { values: [] });
    props.$parent = ext;
    commands.push({ cmd: "element.updateModdleProperties",
                    context: { element, moddleElement: ext, properties: { values: [...ext.get("values"), props] } } });
  }
  const existing = props.get("values").find((p) => p.name === name);
  const text = String(value || "").trim();
  if (!text && existing) {
    commands.push({ cmd: "element.updateModdleProperties",
                    context: { element, moddleElement: props,
                               properties: { values: props.get("values").filter((p) => p !== existing) } } });
  } else if (existing) {
    commands.push({ cmd: "element.updateModdleProperties",
                    context: { element, moddleElement: existing, properties: { value: text } } });
  } else if (text) {
    const property = bpmnFactory.create("camunda:Property", { name, value: text });
    property.$parent = props;
    commands.push({ cmd: "element.updateModdleProperties",
                    context: { element, moddleElement: props, properties: { values: [...props.get("values"), property] } } });
  }
  if (commands.length) commandStack.execute("properties-panel.multi-command-executor", commands);
}

function limitProblem(text) {
  return !text || LIMIT.test(text) ? null : "workdays(N) / workhours(H)";
}

function services() {
  return {
    modeling: useService("modeling"), bpmnFactory: useService("bpmnFactory"),
    commandStack: useService("commandStack"), translate: useService("translate"),
  };
}

function departmentOptions(departments, translate) {
  return [{ value: "", label: translate("(no department)") },
          ...departments.map((d) => ({ value: d.key, label: `${d.name}（${d.key}）` }))];
}

function makeTaskDepartment(departments) {
  return function TaskDepartment({ element, id }) {
    const { modeling, translate } = services();
    return SelectEntry({
      element, id, label: translate("Department"),
      getValue: () => {
        const groups = getBusinessObject(element).get("camunda:candidateGroups") || "";
        if (groups) return groups.split(",")[0].trim();
        const lane = laneOf(getBusinessObject(element));
        const match = lane && departments.find((d) => d.name === lane.name || d.key === lane.name);
        return match ? match.key : "";
      },
      setValue: (value) => modeling.updateProperties(element, { "camunda:candidateGroups": value || undefined }),
      getOptions: () => departmentOptions(departments, translate),
    });
  };
}

function makeLaneDepartment(departments) {
  return function LaneDepartment({ element, id }) {
    const { modeling, translate } = services();
    return SelectEntry({
      element, id, label: translate("Department"),
      getValue: () => {
        const name = getBusinessObject(element).name || "";
        const match = departments.find((d) => d.name === name || d.key === name);
        return match ? match.key : "";
      },
      setValue: (value) => {
        const match = departments.find((d) => d.key === value);
        modeling.updateProperties(element, { name: match ? match.name : "" });
      },
      getOptions: () => departmentOptions(departments, translate),
    });
  };
}

function LimitAmount({ element, id }) {
  const all = services();
  const debounce = useService("debounceInput");
  return TextFieldEntry({
    element, id, label: all.translate("Time limit amount"), debounce,
    getValue: () => readLimit(element).amount,
    setValue: (value) => {
      const amount = String(value || "").trim();
      const current = readLimit(element);
      writeLimit(element, { amount, kind: current.kind === "none" && amount ? "escalation" : current.kind }, all);
    },
    validate: (value) => (value && !/^\d+(\.\d+)?$/.test(String(value).trim()) ? "0–9" : null),
  });
}

function LimitUnit({ element, id }) {
  const all = services();
  return SelectEntry({
    element, id, label: all.translate("Time limit unit"),
    getValue: () => readLimit(element).unit,
    setValue: (unit) => { if (readLimit(element).kind !== "none") writeLimit(element, { unit }, all); },
    getOptions: () => [{ value: "workdays", label: all.translate("working days") },
                       { value: "workhours", label: all.translate("working hours") }],
  });
}

function LimitKind({ element, id }) {
  const all = services();
  return SelectEntry({
    element, id, label: all.translate("When the limit passes"),
    getValue: () => readLimit(element).kind,
    setValue: (kind) => writeLimit(element, { kind, amount: readLimit(element).amount || "1" }, all),
    getOptions: () => [{ value: "none", label: all.translate("No time limit") },
                       { value: "deemed", label: all.translate("Deemed consent (interrupting)") },
                       { value: "escalation", label: all.translate("Escalation (non-interrupting)") }],
  });
}

function propertyEntry(name, labelKey, descriptionKey) {
  return function PropertyEntry({ element, id }) {
    const all = services();
    const debounce = useService("debounceInput");
    return TextFieldEntry({
      element, id, label: all.translate(labelKey), description: all.translate(descriptionKey), debounce,
      getValue: () => readProperty(element, name),
      setValue: (value) => writeProperty(element, name, value, all),
      validate: limitProblem,
    });
  };
}

/** Registers the "审批设置" group with the properties panel. */
export default function ApprovalsPropertiesProvider(propertiesPanel, translate, config) {
  const departments = (config && config.departments) || [];
  const TaskDepartment = makeTaskDepartment(departments);
  const LaneDepartment = makeLaneDepartment(departments);
  const Yellow = propertyEntry("yellowThreshold", "Yellow threshold",
                               "e.g. workdays(1) or workhours(4); empty: the flow's default");
  const Committed = propertyEntry("committedLimit", "Committed limit", "e.g. workdays(2)");
  const Statutory = propertyEntry("statutoryLimit", "Statutory limit", "e.g. workdays(2)");

  this.getGroups = (element) => (groups) => {
    let entries = null;
    if (is(element, "bpmn:UserTask")) {
      entries = [
        { id: "approvals-department", component: TaskDepartment, isEdited: isSelectEntryEdited },
        { id: "approvals-limit-amount", component: LimitAmount, isEdited: isTextFieldEntryEdited },
        { id: "approvals-limit-unit", component: LimitUnit, isEdited: isSelectEntryEdited },
        { id: "approvals-limit-kind", component: LimitKind, isEdited: isSelectEntryEdited },
        { id: "approvals-yellow", component: Yellow, isEdited: isTextFieldEntryEdited },
      ];
    } else if (is(element, "bpmn:Lane")) {
      entries = [{ id: "approvals-lane-department", component: LaneDepartment, isEdited: isSelectEntryEdited }];
    } else if (is(element, "bpmn:Process") || (is(element, "bpmn:Participant") && getBusinessObject(element).processRef)) {
      entries = [
        { id: "approvals-committed", component: Committed, isEdited: isTextFieldEntryEdited },
        { id: "approvals-statutory", component: Statutory, isEdited: isTextFieldEntryEdited },
        { id: "approvals-process-yellow", component: Yellow, isEdited: isTextFieldEntryEdited },
      ];
    }
    if (entries) {
      const general = groups.findIndex((g) => g.id === "general");
      groups.splice(general + 1, 0, { id: "approvals", label: translate("Approval settings"), entries });
    }
    return groups;
  };
  propertiesPanel.registerProvider(400, this);
}

ApprovalsPropertiesProvider.$inject = ["propertiesPanel", "translate", "config.approvals"];

// bpmnlint in the modeler: the recommended rules (bundled, nothing fetched at run time) plus the
// project's rules, which mirror what the server checks at deploy so problems show before deploying.
import recommended from "bpmnlint/config/recommended";
import { is } from "bpmn-js/lib/util/ModelUtil";

const RECOMMENDED_RULES = {
  "ad-hoc-sub-process": require("bpmnlint/rules/ad-hoc-sub-process"),
  "conditional-flows": require("bpmnlint/rules/conditional-flows"),
  "end-event-required": require("bpmnlint/rules/end-event-required"),
  "event-based-gateway": require("bpmnlint/rules/event-based-gateway"),
  "event-sub-process-typed-start-event": require("bpmnlint/rules/event-sub-process-typed-start-event"),
  "fake-join": require("bpmnlint/rules/fake-join"),
  "global": require("bpmnlint/rules/global"),
  "label-required": require("bpmnlint/rules/label-required"),
  "link-event": require("bpmnlint/rules/link-event"),
  "no-bpmndi": require("bpmnlint/rules/no-bpmndi"),
  "no-complex-gateway": require("bpmnlint/rules/no-complex-gateway"),
  "no-disconnected": require("bpmnlint/rules/no-disconnected"),
  "no-duplicate-sequence-flows": require("bpmnlint/rules/no-duplicate-sequence-flows"),
  "no-gateway-join-fork": require("bpmnlint/rules/no-gateway-join-fork"),
  "no-implicit-split": require("bpmnlint/rules/no-implicit-split"),
  "no-implicit-end": require("bpmnlint/rules/no-implicit-end"),
  "no-implicit-start": require("bpmnlint/rules/no-implicit-start"),
  "no-inclusive-gateway": require("bpmnlint/rules/no-inclusive-gateway"),
  "no-overlapping-elements": require("bpmnlint/rules/no-overlapping-elements"),
  "single-blank-start-event": require("bpmnlint/rules/single-blank-start-event"),
  "single-event-definition": require("bpmnlint/rules/single-event-definition"),
  "start-event-required": require("bpmnlint/rules/start-event-required"),
  "sub-process-blank-start-event": require("bpmnlint/rules/sub-process-blank-start-event"),
  "superfluous-gateway": require("bpmnlint/rules/superfluous-gateway"),
  "superfluous-label": require("bpmnlint/rules/superfluous-label"),
  "superfluous-termination": require("bpmnlint/rules/superfluous-termination"),
};

// Mirrors engine/forms.py.
const FIELD_TYPES = ["string", "long", "boolean", "date", "enum"];
const CONSTRAINTS = ["required", "readonly", "minlength", "maxlength", "min", "max"];
const NUMERIC_CONSTRAINTS = ["minlength", "maxlength", "min", "max"];
const LIMIT = /^\s*(workdays|workhours)\(\s*\d+(\.\d+)?\s*\)\s*$/;
const ISO_DURATION = /^\s*P(?!$)(\d+(\.\d+)?Y)?(\d+(\.\d+)?M)?(\d+(\.\d+)?W)?(\d+(\.\d+)?D)?(T(?=\d)(\d+(\.\d+)?H)?(\d+(\.\d+)?M)?(\d+(\.\d+)?S)?)?\s*$/;
const ISO_DATETIME = /^\s*\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?\s*$/;
const ISO_CYCLE = /^\s*R\d*\/(.+)$/;

export function isDepartmentReview(task) {
  return is(task, "bpmn:UserTask") && String(task.get("camunda:formKey") || "").startsWith("review:");
}

export function timerBoundaries(task) {
  const siblings = (task.$parent && task.$parent.get("flowElements")) || [];
  return siblings.filter((e) => is(e, "bpmn:BoundaryEvent") && e.attachedToRef === task &&
    (e.eventDefinitions || []).some((d) => is(d, "bpmn:TimerEventDefinition")));
}

export function laneOf(node) {
  let container = node.$parent;
  while (container && !is(container, "bpmn:Process")) container = container.$parent;
  const lanes = [];
  const collect = (laneSet) => (laneSet && laneSet.lanes || []).forEach((lane) => {
    lanes.push(lane);
    collect(lane.childLaneSet);
  });
  (container && container.laneSets || []).forEach(collect);
  return lanes.filter((lane) => (lane.flowNodeRef || []).includes(node)).pop() || null;
}

export function timerProblem(text) {
  const value = String(text || "").trim();
  if (!value) return "定时器没有填写时间";
  if (LIMIT.test(value) || ISO_DURATION.test(value) || ISO_DATETIME.test(value)) return null;
  const cycle = ISO_CYCLE.exec(value);
  if (cycle && cycle[1].split("/").every((part) => ISO_DURATION.test(part) || ISO_DATETIME.test(part))) return null;
  return `定时器表达式 “${value}” 无法解析：请写 workdays(N)、workhours(H)、ISO 时长（如 P2D、PT4H）或带时区的日期时间`;
}

function departmentRule(departments) {
  const known = new Set();
  departments.forEach((d) => { known.add(d.key); known.add(d.name); });
  return function () {
    return {
      check(node, reporter) {
        if (!is(node, "bpmn:UserTask")) return;
        const groups = String(node.get("camunda:candidateGroups") || "").split(",").map((g) => g.trim()).filter(Boolean);
        if (groups.length) {
          groups.filter((g) => !g.includes("${") && !known.has(g)).forEach((g) =>
            reporter.report(node.id, `候选组 “${g}” 不是已有的部门`));
          return;
        }
        const lane = laneOf(node);
        if (!lane) {
          reporter.report(node.id, "用户任务没有办理部门：请在“审批设置”中选择部门，或放进以部门命名的泳道");
        } else if (!known.has(lane.name)) {
          reporter.report(node.id, `泳道 “${lane.name || lane.id}” 不是已有的部门`);
        }
      },
    };
  };
}

function reviewLimitRule() {
  return {
    check(node, reporter) {
      if (isDepartmentReview(node) && timerBoundaries(node).length === 0) {
        reporter.report(node.id, "部门审查缺少办理时限：请在“审批设置”中填写时限");
      }
    },
  };
}

function timerRule() {
  return {
    check(node, reporter) {
      if (!is(node, "bpmn:TimerEventDefinition")) return;
      const expression = node.timeDuration || node.timeDate || node.timeCycle;
      const problem = timerProblem(expression && expression.body);
      if (problem) reporter.report(node.$parent.id, problem);
    },
  };
}

function formRule() {
  return {
    check(node, reporter) {
      if (!is(node, "bpmn:UserTask") && !is(node, "bpmn:StartEvent")) return;
      const ext = node.extensionElements && node.extensionElements.values || [];
      ext.filter((e) => is(e, "camunda:FormData")).forEach((form) => {
        const seen = new Set();
        (form.fields || []).forEach((field) => {
          const where = field.id ? `表单字段 “${field.id}”` : "一个表单字段";
          if (!field.id) reporter.report(node.id, `${where}没有 ID`);
          else if (seen.has(field.id)) reporter.report(node.id, `${where}重复定义`);
          else if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(field.id)) reporter.report(node.id, `${where}的 ID 只能用字母、数字和下划线`);
          seen.add(field.id);
          if (!FIELD_TYPES.includes(field.type)) {
            reporter.report(node.id, `${where}的类型 “${field.type || ""}” 不受支持；可用 ${FIELD_TYPES.join("、")}`);
          }
          if (field.type === "enum" && !(field.values || []).length) reporter.report(node.id, `${where}是枚举，但没有可选值`);
          const constraints = field.validation && field.validation.constraints || [];
          constraints.forEach((c) => {
            if (!CONSTRAINTS.includes(c.name)) {
              reporter.report(node.id, `${where}的约束 “${c.name || ""}” 不受支持；可用 ${CONSTRAINTS.join("、")}`);
            } else if (NUMERIC_CONSTRAINTS.includes(c.name) && (c.config === undefined || c.config === "" || isNaN(Number(c.config)))) {
              reporter.report(node.id, `${where}的约束 ${c.name} 需要一个数字`);
            }
          });
        });
      });
    },
  };
}

/** The bpmn-js-bpmnlint configuration: { config, resolver } with every rule bundled. */
export function lintConfig(departments) {
  const own = {
    "department-exists": departmentRule(departments),
    "review-time-limit": reviewLimitRule,
    "timer-expression": timerRule,
    "form-fields": formRule,
  };
  return {
    config: {
      extends: "bpmnlint:recommended",
      rules: {
        // Joining gateways and timers customarily carry no name in our flows: a hint, not a blocker.
        "label-required": "warn",
        "approvals/department-exists": "error",
        "approvals/review-time-limit": "error",
        "approvals/timer-expression": "error",
        "approvals/form-fields": "error",
      },
    },
    resolver: {
      resolveRule(pkg, ruleName) {
        if (pkg === "bpmnlint") return RECOMMENDED_RULES[ruleName];
        if (pkg === "bpmnlint-plugin-approvals") return own[ruleName];
        return null;
      },
      resolveConfig(pkg, name) {
        if (pkg === "bpmnlint" && name === "recommended") return recommended;
        return null;
      },
    },
  };
}

// The designer's modeler page: bpmn-js Modeler with the Camunda 7 properties panel, our "审批设置"
// entries, bpmnlint, Chinese texts, import/export, and deploy with the server's problems on the diagram.
import "bpmn-js/dist/assets/diagram-js.css";
import "bpmn-js/dist/assets/bpmn-js.css";
import "bpmn-js/dist/assets/bpmn-font/css/bpmn-embedded.css";
import "@bpmn-io/properties-panel/dist/assets/properties-panel.css";
import "bpmn-js-bpmnlint/dist/assets/css/bpmn-js-bpmnlint.css";

import Modeler from "bpmn-js/lib/Modeler";
import {
  BpmnPropertiesPanelModule, BpmnPropertiesProviderModule, CamundaPlatformPropertiesProviderModule,
} from "bpmn-js-properties-panel";
import CamundaBehaviorsModule from "camunda-bpmn-js-behaviors/lib/camunda-platform";
import camundaModdle from "camunda-bpmn-moddle/resources/camunda.json";
import lintModule from "bpmn-js-bpmnlint";

import { zh, translateModule } from "./zh";
import { lintConfig } from "./modeler/lint";
import ApprovalsPropertiesProvider from "./modeler/panel";

const data = JSON.parse(document.getElementById("designer-data").textContent);
const chinese = data.locale === "zh_CN";
const text = (key) => (data.texts && data.texts[key]) || key;

const modeler = new Modeler({
  container: "#canvas",
  propertiesPanel: { parent: "#properties" },
  approvals: { departments: data.departments },
  linting: { bpmnlint: lintConfig(data.departments), active: true },
  additionalModules: [
    BpmnPropertiesPanelModule, BpmnPropertiesProviderModule, CamundaPlatformPropertiesProviderModule,
    CamundaBehaviorsModule, lintModule,
    { __init__: ["approvalsPropertiesProvider"], approvalsPropertiesProvider: ["type", ApprovalsPropertiesProvider] },
    ...(chinese ? [translateModule(zh)] : []),
  ],
  moddleExtensions: { camunda: camundaModdle },
});
window.approvalsModeler = modeler;   // the browser test and curious designers can reach it

const status = document.getElementById("designer-status");
const deployButton = document.getElementById("deploy");
const problemList = document.getElementById("problems");
let lintErrors = 0;
let serverProblemIds = [];

function say(message, kind) {
  status.textContent = message;
  status.className = `flash ${kind || "info"}`;
  status.hidden = !message;
}

modeler.get("eventBus").on("linting.completed", ({ issues }) => {
  lintErrors = Object.values(issues).flat().filter((issue) => issue.category === "error").length;
  deployButton.disabled = lintErrors > 0;
  deployButton.title = lintErrors ? text("lint_blocks").replace("%(count)s", lintErrors) : "";
  document.getElementById("lint-count").textContent =
    lintErrors ? text("lint_blocks").replace("%(count)s", lintErrors) : text("lint_ok");
  document.body.dataset.lintErrors = String(lintErrors);
});

function clearServerProblems() {
  const overlays = modeler.get("overlays");
  const canvas = modeler.get("canvas");
  overlays.remove({ type: "server-problem" });
  serverProblemIds.forEach((id) => { try { canvas.removeMarker(id, "server-problem"); } catch (e) { /* element gone */ } });
  serverProblemIds = [];
  problemList.replaceChildren();
  problemList.hidden = true;
}

function shapeFor(elementId) {
  const registry = modeler.get("elementRegistry");
  if (!elementId) return null;
  const direct = registry.get(elementId);
  if (direct) return direct;
  // Problems may name a timer definition or form inside a shape: show them on that shape.
  return registry.find((shape) => {
    const bo = shape.businessObject;
    return bo && ((bo.eventDefinitions || []).some((d) => d.id === elementId) ||
                  (bo.processRef && bo.processRef.id === elementId));
  }) || null;
}

function showServerProblems(problems) {
  clearServerProblems();
  const overlays = modeler.get("overlays");
  const canvas = modeler.get("canvas");
  problems.forEach((problem) => {
    const item = document.createElement("li");
    const shape = shapeFor(problem.element_id);
    item.textContent = problem.element_id ? `${problem.element_id}: ${problem.message}` : problem.message;
    item.dataset.elementId = problem.element_id || "";
    if (shape) {
      item.tabIndex = 0;
      item.addEventListener("click", () => {
        modeler.get("selection").select(shape);
        canvas.scrollToElement(shape);
      });
      if (!serverProblemIds.includes(shape.id)) {
        canvas.addMarker(shape.id, "server-problem");
        serverProblemIds.push(shape.id);
      }
      const badge = document.createElement("div");
      badge.className = "server-problem-badge";
      badge.textContent = "!";
      badge.title = problem.message;
      badge.dataset.elementId = problem.element_id;
      overlays.add(shape.id, "server-problem", { position: { top: -10, left: -10 }, html: badge });
    }
    problemList.appendChild(item);
  });
  problemList.hidden = problems.length === 0;
}

async function deploy() {
  if (lintErrors > 0) {
    say(text("lint_blocks").replace("%(count)s", lintErrors), "error");
    return;
  }
  deployButton.disabled = true;
  say(text("deploying"), "info");
  try {
    const { xml } = await modeler.saveXML({ format: true });
    const response = await fetch(data.deploy_url, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRFToken": data.csrf_token, Accept: "application/json" },
      // The edited version's service guide travels along only while the diagram is still that process.
      body: JSON.stringify(sameProcess() ? { xml, base_key: data.key, base_version: data.version } : { xml }),
    });
    const body = await response.json().catch(() => ({}));
    if (response.ok) {
      clearServerProblems();
      say(body.message, "info");
      if (body.url) window.location.assign(body.url);
    } else {
      say(body.error || `HTTP ${response.status}`, "error");
      showServerProblems(body.errors || []);
    }
  } catch (error) {
    say(String(error), "error");
  } finally {
    deployButton.disabled = lintErrors > 0;
  }
}

function sameProcess() {
  const processes = modeler.getDefinitions().rootElements.filter((e) => e.$type === "bpmn:Process");
  return Boolean(data.key) && processes.some((p) => p.id === data.key);
}

async function exportXml() {
  const { xml } = await modeler.saveXML({ format: true });
  const process = modeler.getDefinitions().rootElements.find((e) => e.$type === "bpmn:Process");
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([xml], { type: "application/xml" }));
  link.download = `${(process && process.id) || "diagram"}.bpmn`;
  document.body.appendChild(link);
  link.click();
  link.remove();
}

async function open(xml) {
  clearServerProblems();
  try {
    const { warnings } = await modeler.importXML(xml);
    modeler.get("canvas").zoom("fit-viewport");
    say(warnings.length ? text("import_warnings").replace("%(count)s", warnings.length) : "", "info");
    document.body.dataset.modelerReady = "true";
  } catch (error) {
    say(`${text("import_failed")} ${error.message}`, "error");
  }
}

document.getElementById("deploy").addEventListener("click", deploy);
document.getElementById("export").addEventListener("click", exportXml);
document.getElementById("import-file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => open(String(reader.result));
  reader.readAsText(file, "utf-8");
});

open(data.xml);

// The case page's diagram: bpmn-js NavigatedViewer with completed, current and overdue steps marked.
import NavigatedViewer from "bpmn-js/lib/NavigatedViewer";
import "bpmn-js/dist/assets/diagram-js.css";
import "bpmn-js/dist/assets/bpmn-js.css";

// Later markers win in app.css, so an overdue current step shows as overdue.
const MARKERS = [["completed", "step-completed"], ["active", "step-active"], ["overdue", "step-overdue"]];

async function show(container) {
  const data = JSON.parse(document.getElementById(container.dataset.source).textContent);
  const viewer = new NavigatedViewer({ container });
  try {
    await viewer.importXML(data.xml);
  } catch (error) {
    container.classList.add("failed");
    container.textContent = `${container.dataset.failed} ${error.message}`;
    return;
  }
  const canvas = viewer.get("canvas");
  const registry = viewer.get("elementRegistry");
  const overlays = viewer.get("overlays");
  for (const [state, marker] of MARKERS) {
    for (const id of data[state] || []) {
      if (registry.get(id)) canvas.addMarker(id, marker);
    }
  }
  for (const [id, departments] of Object.entries(data.departments || {})) {
    if (!registry.get(id)) continue;
    const label = document.createElement("div");
    label.className = "step-departments";
    label.textContent = departments.join("、");   // text, never HTML: names come from the database
    // Never shrink below natural size: a whole flow fitted to the page would make them unreadable.
    overlays.add(id, "departments", { position: { bottom: 6, left: 0 }, scale: { min: 1 }, html: label });
  }
  canvas.zoom("fit-viewport", "auto");
  container.dataset.rendered = "true";
}

document.querySelectorAll("[data-case-diagram]").forEach((container) => { show(container); });

// The visual diff of two process versions: the old diagram with removed/changed elements marked, the
// new one with added/changed ones; the element-level diff itself comes from the server (engine.versions).
import "bpmn-js/dist/assets/diagram-js.css";
import "bpmn-js/dist/assets/bpmn-js.css";

import NavigatedViewer from "bpmn-js/lib/NavigatedViewer";

const data = JSON.parse(document.getElementById("diff-data").textContent);

/** Ids of everything a shape carries (event definitions, forms, properties...) mapped to that shape. */
function ownerIndex(registry) {
  const owners = {};
  const walk = (object, shapeId, depth) => {
    if (!object || typeof object !== "object" || depth > 8 || !object.$descriptor) return;
    if (object.id && !(object.id in owners)) owners[object.id] = shapeId;
    for (const property of object.$descriptor.properties || []) {
      if (property.isReference) continue;
      const value = object.get ? object.get(property.name) : undefined;
      if (Array.isArray(value)) value.forEach((child) => walk(child, shapeId, depth + 1));
      else if (value && typeof value === "object" && value.$descriptor && value !== object.$parent) {
        // flowElements of a process or sub-process are shapes of their own, indexed directly.
        if (!(value.id && registry.get(value.id))) walk(value, shapeId, depth + 1);
      }
    }
  };
  registry.getAll().forEach((shape) => {
    const bo = shape.businessObject;
    if (!bo) return;
    owners[bo.id] = shape.id;
    // A process drawn as a pool: its own changes (limits, properties) show on the pool.
    if (bo.processRef && !(bo.processRef.id in owners)) owners[bo.processRef.id] = shape.id;
  });
  registry.getAll().forEach((shape) => {
    const bo = shape.businessObject;
    if (!bo || !bo.$descriptor) return;
    for (const property of bo.$descriptor.properties || []) {
      if (property.isReference || ["flowElements", "laneSets", "artifacts"].includes(property.name)) continue;
      const value = bo.get(property.name);
      (Array.isArray(value) ? value : [value]).forEach((child) => {
        if (child && child.$descriptor && !(child.id && registry.get(child.id))) walk(child, shape.id, 1);
      });
    }
  });
  return owners;
}

async function show(container, xml, marks) {
  const viewer = new NavigatedViewer({ container });
  await viewer.importXML(xml);
  const canvas = viewer.get("canvas");
  const registry = viewer.get("elementRegistry");
  const owners = ownerIndex(registry);
  const marked = {};
  for (const [kind, ids] of Object.entries(marks)) {
    for (const id of ids) {
      const shapeId = owners[id];
      if (!shapeId || marked[shapeId] === "diff-added" || marked[shapeId] === "diff-removed") continue;
      const cls = shapeId === id ? kind : "diff-changed";   // a changed timer or form marks its owner as changed
      if (marked[shapeId]) canvas.removeMarker(shapeId, marked[shapeId]);
      canvas.addMarker(shapeId, cls);
      marked[shapeId] = cls;
    }
  }
  canvas.zoom("fit-viewport");
  container.dataset.marked = JSON.stringify(marked);
  return viewer;
}

const ids = (list) => list.map((e) => e.id);
Promise.all([
  show(document.getElementById("diff-old"), data.old_xml,
       { "diff-removed": ids(data.diff.removed), "diff-changed": ids(data.diff.changed) }),
  show(document.getElementById("diff-new"), data.new_xml,
       { "diff-added": ids(data.diff.added), "diff-changed": ids(data.diff.changed) }),
]).then(() => { document.body.dataset.diffReady = "true"; })
  .catch((error) => {
    const status = document.getElementById("diff-status");
    status.hidden = false;
    status.textContent = String(error);
  });

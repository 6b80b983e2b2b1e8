// The migration page: migrate every movable case in batches, with a progress bar and per-case results.
const data = JSON.parse(document.getElementById("migrate-data").textContent);
const button = document.getElementById("migrate-all");
const progress = document.getElementById("migrate-progress");
const progressText = document.getElementById("migrate-progress-text");

function resultCell(result) {
  const row = document.querySelector(`tr[data-case-id="${result.id}"]`);
  if (!row) return;
  const cell = row.querySelector(".result");
  cell.replaceChildren();
  row.dataset.migrated = result.migrated ? "true" : "false";
  const label = document.createElement("strong");
  label.textContent = result.migrated ? data.texts.migrated : data.texts.failed;
  label.className = result.migrated ? "migrated" : "field-error";
  cell.appendChild(label);
  if (!result.migrated) {
    cell.appendChild(document.createTextNode(` ${result.error}`));
    return;
  }
  const list = document.createElement("ul");
  (result.steps || []).forEach((step) => {
    const item = document.createElement("li");
    item.className = "migrated-step";
    item.dataset.bpmnId = step.bpmn_id;
    item.textContent = `${step.name}: ${step.due_at} → ${step.new_due_at}`;
    list.appendChild(item);
  });
  cell.appendChild(list);
  const form = document.createElement("form");
  form.method = "post";
  form.action = result.rollback_url;
  const token = document.createElement("input");
  token.type = "hidden";
  token.name = "csrf_token";
  token.value = data.csrf_token;
  const undo = document.createElement("button");
  undo.type = "submit";
  undo.className = "secondary";
  undo.textContent = data.texts.rollback;
  form.append(token, undo);
  cell.appendChild(form);
}

async function migrateAll() {
  button.disabled = true;
  progress.hidden = false;
  progress.max = data.ids.length || 1;
  let done = 0;
  let moved = 0;
  for (let start = 0; start < data.ids.length; start += data.batch) {
    const ids = data.ids.slice(start, start + data.batch);
    progressText.textContent = `${data.texts.progress} ${done}/${data.ids.length}`;
    let results;
    try {
      const response = await fetch(data.run_url, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRFToken": data.csrf_token, Accept: "application/json" },
        body: JSON.stringify({ ids, to_version: data.to_version }),
      });
      const body = await response.json();
      results = response.ok ? body.results : ids.map((id) => ({ id, migrated: false, error: body.error }));
    } catch (error) {
      results = ids.map((id) => ({ id, migrated: false, error: String(error) }));
    }
    results.forEach((result) => {
      resultCell(result);
      if (result.migrated) moved += 1;
    });
    done += ids.length;
    progress.value = done;
  }
  progressText.textContent = `${data.texts.done}: ${moved}/${data.ids.length}`;
  document.body.dataset.migrationDone = "true";
}

if (button) button.addEventListener("click", migrateAll);

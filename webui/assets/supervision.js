// Supervision pages: the board refreshes itself from its JSON endpoint; statistics draw ECharts charts.
import * as echarts from "echarts/core";
import { BarChart, LineChart, PieChart } from "echarts/charts";
import { GridComponent, LegendComponent, TooltipComponent } from "echarts/components";
import { CanvasRenderer } from "echarts/renderers";

echarts.use([BarChart, LineChart, PieChart, GridComponent, LegendComponent, TooltipComponent, CanvasRenderer]);

const LIGHTS = ["green", "yellow", "red"];
const COLOURS = { green: "#2e7d32", yellow: "#f9a825", red: "#c62828" };

function readJson(id) {
  const node = document.getElementById(id);
  return node ? JSON.parse(node.textContent) : null;
}

function localTime(iso) {
  if (!iso) return "—";
  const parts = new Intl.DateTimeFormat("en-CA", {
    timeZone: "Asia/Shanghai", year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", hourCycle: "h23",
  }).formatToParts(new Date(iso));
  const get = (type) => parts.find((p) => p.type === type).value;
  return `${get("year")}-${get("month")}-${get("day")} ${get("hour")}:${get("minute")}`;
}

function cell(tag, text, attributes = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

function emptyRow(columns, text) {
  const row = document.createElement("tr");
  row.className = "empty";
  row.appendChild(cell("td", text, { colspan: String(columns), class: "muted" }));
  return row;
}

// --- the live board ---------------------------------------------------------------------------

function renderBoard(root, data, labels) {
  const caseUrl = root.dataset.caseUrl || "/cases/";
  const updated = document.getElementById("board-updated");
  updated.setAttribute("datetime", data.generated_at);
  updated.textContent = localTime(data.generated_at);
  for (const kind of ["tasks", "cases"]) {
    for (const light of LIGHTS) {
      const count = root.querySelector(`.board-total[data-kind="${kind}"] [data-light="${light}"] .count`);
      if (count) count.textContent = String(data.totals[kind][light]);
    }
  }
  const red = root.querySelector("#board-red tbody");
  red.replaceChildren(...(data.red.length ? data.red.map((item) => {
    const row = document.createElement("tr");
    row.className = "red-item";
    row.dataset.kind = item.kind;
    row.dataset.caseId = String(item.instance_id);
    row.dataset.taskId = item.task_id === null ? "" : String(item.task_id);
    const link = cell("a", item.case_no, { href: caseUrl + item.instance_id });
    const first = document.createElement("td");
    first.appendChild(link);
    row.append(first, cell("td", item.process_name), cell("td", item.step || labels.whole_case),
      cell("td", item.departments.map((d) => d.name).join(", ") || "—"), cell("td", item.holder || labels.unclaimed),
      cell("td", localTime(item.due_at)),
      cell("td", labels.overdue.replace("{days}", item.overdue_working_days).replace("{hours}", item.overdue_working_hours)));
    return row;
  }) : [emptyRow(7, labels.nothing_overdue)]));
  const departments = root.querySelector("#board-departments tbody");
  departments.replaceChildren(...(data.departments.length ? data.departments.map((d) => {
    const row = document.createElement("tr");
    row.dataset.department = d.key;
    row.appendChild(cell("th", d.name, { scope: "row" }));
    for (const light of LIGHTS) row.appendChild(cell("td", d[light], { class: "count", "data-light": light }));
    return row;
  }) : [emptyRow(4, labels.no_steps)]));
  const flows = root.querySelector("#board-flows tbody");
  flows.replaceChildren(...(data.flows.length ? data.flows.map((f) => {
    const row = document.createElement("tr");
    row.dataset.flow = f.key;
    row.appendChild(cell("th", f.name, { scope: "row" }));
    for (const light of LIGHTS) row.appendChild(cell("td", f.tasks[light], { class: "count", "data-light": light }));
    for (const light of LIGHTS) row.appendChild(cell("td", f.cases[light], { class: "count", "data-light": light }));
    return row;
  }) : [emptyRow(7, labels.no_cases)]));
  root.dataset.refreshed = String(Number(root.dataset.refreshed || "0") + 1);
}

function startBoard(root) {
  const labels = readJson("board-labels") || {};
  const seconds = Math.max(1, Number(root.dataset.refresh) || 30);
  let warned = null;
  const refresh = async () => {
    try {
      const response = await fetch(root.dataset.url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      renderBoard(root, await response.json(), labels);
      if (warned) { warned.remove(); warned = null; }
    } catch (error) {
      if (!warned) {
        warned = cell("p", labels.refresh_failed, { class: "flash error", role: "status" });
        root.prepend(warned);
      }
    } finally {
      window.setTimeout(refresh, seconds * 1000);
    }
  };
  window.setTimeout(refresh, seconds * 1000);
}

// --- statistics charts --------------------------------------------------------------------------

function chart(id, option) {
  const node = document.getElementById(id);
  if (!node) return;
  const instance = echarts.init(node);
  instance.setOption({ animation: false, tooltip: { trigger: "axis" }, ...option });
  window.addEventListener("resize", () => instance.resize());
  node.dataset.rendered = "true";
}

function startStatistics(data, labels) {
  const months = data.trend.map((row) => row.month);
  chart("chart-trend", {
    legend: { top: 0, data: [labels.received, labels.completed, labels.on_time_rate] },
    grid: { left: 40, right: 50, bottom: 30, top: 40 },
    xAxis: { type: "category", data: months },
    yAxis: [{ type: "value", minInterval: 1 }, { type: "value", min: 0, max: 100, axisLabel: { formatter: "{value}%" } }],
    series: [
      { name: labels.received, type: "bar", data: data.trend.map((row) => row.received) },
      { name: labels.completed, type: "bar", data: data.trend.map((row) => row.completed) },
      { name: labels.on_time_rate, type: "line", yAxisIndex: 1,
        data: data.trend.map((row) => (row.on_time_rate === null ? null : Math.round(row.on_time_rate * 1000) / 10)) },
    ],
  });
  chart("chart-departments", {
    legend: { top: 0, data: [labels.on_time, labels.late] },
    grid: { left: 80, right: 20, bottom: 30, top: 40 },
    xAxis: { type: "value", minInterval: 1 },
    yAxis: { type: "category", data: data.departments.map((row) => row.name || row.department) },
    series: [
      { name: labels.on_time, type: "bar", stack: "steps", itemStyle: { color: COLOURS.green },
        data: data.departments.map((row) => row.on_time) },
      { name: labels.late, type: "bar", stack: "steps", itemStyle: { color: COLOURS.red },
        data: data.departments.map((row) => row.late) },
    ],
  });
  // Zero slices are left out: an all-zero ring would otherwise be drawn as three equal parts.
  const slices = (counts) => LIGHTS.filter((light) => counts[light] > 0)
    .map((light) => ({ name: labels[light], value: counts[light], itemStyle: { color: COLOURS[light] } }));
  chart("chart-lights", {
    tooltip: { trigger: "item" },
    legend: { top: 0, data: LIGHTS.map((light) => labels[light]) },
    series: [
      { name: labels.steps, type: "pie", radius: ["20%", "40%"], center: ["30%", "55%"],
        stillShowZeroSum: false, label: { show: false },
        data: slices(data.lights.tasks) },
      { name: labels.cases, type: "pie", radius: ["20%", "40%"], center: ["75%", "55%"],
        stillShowZeroSum: false, label: { show: false },
        data: slices(data.lights.cases) },
    ],
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const board = document.getElementById("board");
  if (board) startBoard(board);
  const data = readJson("stats-data");
  if (data) startStatistics(data, readJson("stats-labels") || {});
});

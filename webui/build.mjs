// Bundles each entry in assets/ into static/dist/ (one file per page family), with bpmn-js's CSS.
import { build } from "esbuild";
import { readdirSync } from "node:fs";

const entries = readdirSync("assets").filter((name) => name.endsWith(".js")).map((name) => `assets/${name}`);

await build({
  entryPoints: entries,
  bundle: true,
  minify: true,
  sourcemap: false,
  format: "iife",
  target: ["es2019"],
  outdir: "static/dist",
  loader: { ".woff": "file", ".woff2": "file", ".ttf": "file", ".eot": "file", ".svg": "file" },
  logLevel: "warning",
});
console.log(`built ${entries.length} bundle(s) into webui/static/dist`);

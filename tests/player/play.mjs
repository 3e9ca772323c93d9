// Usage: node play.mjs PAGE_URL JSON_LIST_OF_SRC -> prints a JSON list of results.
// Drives the system Chromium (no browser download) through playwright-core.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [page_url, list] = process.argv.slice(2);
const sources = JSON.parse(list);
const profile = mkdtempSync(join(tmpdir(), "atcdn-chromium-"));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--autoplay-policy=no-user-gesture-required"],
});
const results = [];
try {
  for (const src of sources) {
    const page = await browser.newPage();
    const logs = [];
    page.on("console", (msg) => logs.push(msg.text()));
    try {
      await page.goto(`${page_url}?src=${encodeURIComponent(src)}`);
      await page.waitForFunction(() => window.result !== null, null, { timeout: 90000 });
      results.push({ src, ...(await page.evaluate(() => window.result)) });
    } catch (err) {
      const state = await page.evaluate(() => ({ t: document.getElementById("video").currentTime,
        d: document.getElementById("video").duration })).catch(() => ({}));
      results.push({ src, ok: false, error: String(err), state, logs: logs.slice(-5) });
    }
    await page.close();
  }
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(results));

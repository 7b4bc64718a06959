//! Draws on the page of a running `quickdraw serve` in headless Chromium and checks that the
//! model's classes are listed and that live guesses appear and come from the server.
//!
//! Usage: node draw.mjs URL [ARTIFACT_DIR]   (env CHROMIUM: browser binary, default /usr/bin/chromium)
//! Exit 0 on success; prints one JSON summary line; saves draw.png (and failure.png) in ARTIFACT_DIR.

import { chromium } from "playwright-core";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const url = process.argv[2];
const artifacts = path.resolve(process.argv[3] || "target/test-artifacts");
if (!url) {
  console.error("usage: node draw.mjs URL [ARTIFACT_DIR]");
  process.exit(2);
}
fs.mkdirSync(artifacts, { recursive: true });
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "quickdraw-chromium-"));

function check(cond, what) {
  if (!cond) throw new Error("check failed: " + what);
}

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath,
  headless: true,
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
  viewport: { width: 800, height: 900 },
  locale: "en-US",
});

let page;
const summary = { url, classify: [] };
try {
  page = context.pages()[0] || (await context.newPage());
  page.on("console", (m) => console.error("[page] " + m.type() + ": " + m.text()));
  page.on("pageerror", (e) => console.error("[page error] " + e));
  // Every classify answer the page receives: status, the server's headers, the top labels.
  const answers = [];
  page.on("response", async (r) => {
    if (!r.url().includes(":classify")) return;
    const h = r.headers();
    let top = null;
    try {
      const body = await r.json();
      top = body.result[0].slice(0, 3).map((p) => p[0]);
    } catch (e) {
      top = String(e);
    }
    answers.push({ status: r.status(), version: h["x-quickdraw-model-version"], request: h["x-quickdraw-request-id"], top });
  });
  const requests = [];
  page.on("request", (r) => {
    if (r.url().includes(":classify")) requests.push(JSON.parse(r.postData()));
  });

  await page.goto(url);
  await page.waitForFunction(() => /^\d+$/.test(document.getElementById("version").textContent), null, { timeout: 10000 });
  summary.version_shown = await page.textContent("#version");
  // The classes the model knows are listed (from the metadata's labels).
  await page.waitForFunction(() => document.querySelectorAll("#classes li").length > 0, null, { timeout: 10000 });
  summary.classes_shown = await page.$$eval("#classes li", (lis) => lis.map((li) => li.dataset.label));
  summary.n_classes_shown = await page.textContent("#n-classes");

  // Draw a triangle and a line with mouse events, points a few ms apart.
  const box = await page.locator("#pad").boundingBox();
  const at = (fx, fy) => [box.x + fx * box.width, box.y + fy * box.height];
  async function stroke(points, midway) {
    const [x0, y0] = at(...points[0]);
    await page.mouse.move(x0, y0);
    await page.mouse.down();
    for (const [i, p] of points.slice(1).entries()) {
      const [x, y] = at(...p);
      await page.mouse.move(x, y, { steps: 6 });
      if (i === 0 && midway) await midway();
    }
    await page.mouse.up();
  }
  // Live guesses: pause with the pen down after the first segment; the page asks the server
  // about the unfinished stroke (debounced) and shows guesses before the stroke ends.
  await stroke([[0.2, 0.8], [0.5, 0.2], [0.8, 0.8], [0.2, 0.8]], async () => {
    await page.waitForFunction(() => document.querySelectorAll("#guesses li").length === 3, null, { timeout: 15000 });
    summary.live = { requests: requests.length, first_points: requests[0].examples[0].drawing[0][0].length };
  });
  check(summary.live.requests >= 1, "a guess arrived while the pen was still down");
  await stroke([[0.3, 0.9], [0.7, 0.9]]);

  await page.waitForFunction(() => document.querySelectorAll("#guesses li").length === 3, null, { timeout: 15000 });
  // Let the last debounced request land.
  await page.waitForTimeout(800);
  const shown = await page.$$eval("#guesses li", (lis) => lis.map((li) => li.dataset.label));
  summary.shown = shown;
  summary.status = await page.textContent("#status");
  check(answers.length > 0, "the page sent classify requests");
  const last = answers[answers.length - 1];
  summary.classify = answers;
  check(last.status === 200, "classify answered 200, got " + last.status);
  check(/^\d+$/.test(last.version || ""), "the answer carries the server's x-quickdraw-model-version header");
  check(last.version === summary.version_shown, "the page shows the version the server reports");
  check(JSON.stringify(last.top) === JSON.stringify(shown), "the guesses shown are the server's top 3: " + JSON.stringify(last.top) + " vs " + JSON.stringify(shown));
  check(summary.status.includes("request #" + last.request), "the page shows the server's request id");

  // The page sends strokes with timing, never pixels.
  const sent = requests[requests.length - 1];
  const drawing = sent.examples[0].drawing;
  check(drawing.length === 2, "two strokes sent, got " + drawing.length);
  check(drawing.every((s) => s.length === 3 && s[0].length === s[2].length), "each stroke is [x, y, t]");
  check(drawing[1][2][0] >= drawing[0][2][drawing[0][2].length - 1], "times increase across strokes");
  // The metadata it knows: the locale's region as countrycode (the context's locale is en-US).
  check(sent.examples[0].countrycode === "US", "countrycode from the locale, got " + JSON.stringify(sent.examples[0].countrycode));
  summary.points = drawing.map((s) => s[0].length);

  await page.screenshot({ path: path.join(artifacts, "draw.png"), fullPage: true });

  // Undo removes the last stroke and asks again; clear empties the guesses.
  await page.click("#undo");
  await page.waitForFunction(() => document.getElementById("status").textContent.includes(", 1 strokes"), null, { timeout: 10000 });
  check(requests[requests.length - 1].examples[0].drawing.length === 1, "after undo one stroke is sent");
  await page.click("#clear");
  check((await page.$$("#guesses li")).length === 0, "clear removes the guesses");

  summary.ok = true;
  console.log(JSON.stringify(summary));
} catch (e) {
  summary.ok = false;
  summary.error = String(e && e.stack || e);
  if (page) {
    try {
      await page.screenshot({ path: path.join(artifacts, "failure.png"), fullPage: true });
    } catch {}
  }
  console.log(JSON.stringify(summary));
  process.exitCode = 1;
} finally {
  await context.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}

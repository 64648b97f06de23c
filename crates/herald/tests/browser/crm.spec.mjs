// The crm_comments page in headless Chromium: two pages on one thread, a comment
// posted in one appears in the other over SSE; the server restarts; the pages show
// "reconnecting", then "live", and catch up on what changed meanwhile.
//
//   node crm.spec.mjs <base url> <screenshot path>
//
// Run by crates/herald/tests/browser.rs, which owns the server process. They talk
// in lines: this script prints STOP and waits for STOPPED (the server has exited),
// prints START and waits for "STARTED <id>" (the server is back on the same address
// and database, and comment <id> was created over REST right after it came up).
// Progress goes to stderr; stdout carries only the protocol lines. Chromium is
// /usr/bin/chromium (Debian's package), or $CHROMIUM.

import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const [base, screenshot] = process.argv.slice(2);
assert.ok(base && screenshot, "usage: node crm.spec.mjs <base url> <screenshot path>");
const started = Date.now();
const note = (text) => console.error(`[browser +${((Date.now() - started) / 1000).toFixed(1)}s] ${text}`);

const input = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function ask(command, answer) {
  console.log(command);
  const { value, done } = await input.next();
  assert.ok(!done, `stdin closed while waiting for ${answer}`);
  assert.ok(value.startsWith(answer), `expected ${answer}, got ${value}`);
  return value.slice(answer.length).trim();
}

const state = (page) => page.locator("#connection").getAttribute("data-state");
async function waitForState(page, name, wanted, timeout = 15000) {
  try {
    await page.waitForFunction(
      (s) => document.getElementById("connection").dataset.state === s,
      wanted,
      { timeout },
    );
  } catch (e) {
    throw new Error(`page ${name}: connection is ${await state(page)}, not ${wanted}: ${e.message}`);
  }
  assert.equal(await page.locator("#connection").textContent(), wanted);
  note(`page ${name}: ${wanted}`);
}
const comment = (page, text) => page.locator("#comments li", { hasText: text });

mkdirSync(dirname(screenshot), { recursive: true });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
});
const pageErrors = [];
let a;
let b;
try {
  // Two separate browser contexts: like two people on two machines.
  const open = async (name) => {
    const context = await browser.newContext({ viewport: { width: 900, height: 760 } });
    const page = await context.newPage();
    page.on("pageerror", (e) => pageErrors.push(`page ${name}: ${e.message}`));
    page.on("console", (m) => { if (m.type() === "error") note(`page ${name} console: ${m.text()}`); });
    await page.goto(`${base}/?thread=1`);
    return page;
  };
  [a, b] = await Promise.all([open("A"), open("B")]);
  await waitForState(a, "A", "live");
  await waitForState(b, "B", "live");
  assert.equal(await a.locator("#thread-id").textContent(), "1");

  // A validation error from the API shows in the form (whitespace passes `required`).
  await a.fill("#author", "Alice");
  await a.fill("#body", "   ");
  await a.click("#post");
  await a.locator("#form-error", { hasText: "body must not be empty" }).waitFor({ timeout: 5000 });

  // A posts twice; B sees both, through its event stream (B itself made no request
  // but the refetches the events caused).
  const stamp = new Date().toISOString().slice(11, 19);
  const first = `Call the customer back about the renewal (${stamp})`;
  const second = `Draft the quote for 40 seats (${stamp})`;
  for (const text of [first, second]) {
    await a.fill("#body", text);
    await a.click("#post");
    await comment(a, text).waitFor({ timeout: 10000 });
    assert.equal(await a.locator("#body").inputValue(), "", "the form is cleared after posting");
    assert.equal(await a.locator("#form-error").textContent(), "");
    await comment(b, text).waitFor({ timeout: 10000 });
  }
  await b.locator("#log", { hasText: "comment_created" }).waitFor({ timeout: 5000 });
  note("page B shows the comments posted in page A");

  // B edits the first; A sees the edit.
  const edited = `${first}: done, they renew in March`;
  await comment(b, first).locator("button.edit").click();
  await b.locator("#comments li.editing textarea").fill(edited);
  await b.locator("#comments li.editing button", { hasText: "Save" }).click();
  await comment(a, edited).waitFor({ timeout: 10000 });
  await comment(a, edited).locator("time", { hasText: "(edited)" }).waitFor({ timeout: 1000 });
  note("page A shows the edit made in page B");

  // A deletes the second; B's list drops it.
  const gone = comment(b, second);
  await gone.waitFor({ timeout: 1000 });
  await comment(a, second).locator("button.delete").click();
  await gone.waitFor({ state: "detached", timeout: 10000 });
  note("page B dropped the comment deleted in page A");

  // The server stops: both pages say reconnecting.
  await ask("STOP", "STOPPED");
  await waitForState(a, "A", "reconnecting");
  await waitForState(b, "B", "reconnecting");

  // It comes back (same address, same database) and a comment is created over REST
  // before the pages are back: they reconnect, are told to refetch (the in-memory
  // hub lost their history: herald.reset), and show it.
  const id = await ask("START", "STARTED");
  for (const [page, name] of [[a, "A"], [b, "B"]]) {
    await waitForState(page, name, "live", 20000);
    await page.locator(`#comments li[data-id="${id}"]`).waitFor({ timeout: 10000 });
    await comment(page, edited).waitFor({ timeout: 1000 });
    assert.equal(await page.locator("#comments li").count(), 2, `page ${name}: two comments`);
    const resets = Number(await page.locator("#reset-count").textContent());
    assert.ok(resets >= 1, `page ${name} caught up without a herald.reset (${resets})`);
    note(`page ${name} caught up: comment ${id} shown after ${resets} reset(s)`);
  }

  assert.deepEqual(pageErrors, []);
  await b.screenshot({ path: screenshot, fullPage: true });
  console.log(`SCREENSHOT ${screenshot}`);
} catch (e) {
  const failed = screenshot.replace(/\.png$/, "-failure.png");
  await (b ?? a)?.screenshot({ path: failed, fullPage: true }).catch(() => {});
  note(`failed; screenshot of the page at ${failed}`);
  for (const [page, name] of [[a, "A"], [b, "B"]]) {
    if (page) note(`page ${name} log:\n${await page.locator("#log").innerText().catch(() => "?")}`);
  }
  throw e;
} finally {
  await browser.close();
}
note("passed");
console.log("DONE");
process.exit(0);

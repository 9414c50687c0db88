// End-to-end test of the store manager page and the notes example in a real
// headless Chromium, against real `masq relay` and `masq store` processes.
//
//   cd tests/browser && npm ci && node run.mjs
//
// Environment: MASQ_BIN (default ../../target/release/masq), CHROMIUM
// (default /usr/bin/chromium), MASQ_ARTIFACTS (screenshots; default
// ../../target/browser). .ci/run installs Chromium and runs this.
//
// The flow (issue M6): two stores are paired from their manager pages; the
// notes page on store A waits for approval, is approved on A's manager page and
// writes a note; the note shows up in a notes page on store B (approved on B's
// manager page); an edit on B shows up on A; a page from an origin nobody
// approved is refused (and cannot use the admin token); denying and revoking
// from the manager close the pages' access.

import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, mkdirSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import {
  root,
  MASQ,
  CHROMIUM,
  CHROMIUM_ARGS,
  ARTIFACTS,
  temps,
  log,
  freePort,
  until,
  startRelay,
  startStore,
  serveDirs,
  newPage,
  cleanup as cleanupAll,
} from "./harness.mjs";

let browser;

/** A static file server for examples/notes on its own port (its own origin). */
function serveNotes() {
  return serveDirs({ "/": join(root, "examples/notes") });
}

async function shot(page, name) {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

/** Text of the first element matching `sel`, or "". */
async function text(page, sel) {
  const el = await page.$(sel);
  return el ? (await el.textContent()) || "" : "";
}

async function main() {
  mkdirSync(ARTIFACTS, { recursive: true });
  const relay = await startRelay();
  const [a, b] = await Promise.all([startStore("laptop", relay), startStore("phone", relay)]);
  log(`stores: ${a.http} ${b.http}; relay ${relay}`);

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: CHROMIUM_ARGS,
  });
  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });

  // ---- 1. Pair the two stores from their manager pages.
  const mA = await newPage(context, "manager A");
  const mB = await newPage(context, "manager B");
  await mA.goto(a.link);
  await mB.goto(b.link);
  await mA.waitForFunction(() => document.querySelector("#conn-state")?.textContent.includes("ready"));
  await mB.waitForFunction(() => document.querySelector("#conn-state")?.textContent.includes("ready"));
  log("manager pages connected");

  // The link carries a single-use code, never the admin token (issue 16): the
  // page removes it from the address bar (so history keeps no secret), keeps
  // a session in sessionStorage, and the link is useless once used.
  for (const [page, store] of [[mA, a], [mB, b]]) {
    if (store.link.includes(store.token)) throw new Error(`the manager link carries the admin token: ${store.link}`);
    if (!/#code=login-/.test(store.link)) throw new Error(`the manager link has no login code: ${store.link}`);
    const url = page.url();
    if (url.includes("code=") || url.includes("token=") || url.includes(store.token))
      throw new Error(`the manager page kept a secret in its URL: ${url}`);
    const hist = await page.evaluate(() => location.href);
    if (hist !== `${store.http}/`) throw new Error(`the manager page's address is ${hist}, not ${store.http}/`);
    if (!(await page.evaluate(() => sessionStorage.getItem("masq-admin-session"))))
      throw new Error("the manager page keeps no session");
  }
  await mA.reload();
  await mA.waitForFunction(() => document.querySelector("#conn-state")?.textContent.includes("ready"));
  const reused = await newPage(context, "manager A, link reused");
  await reused.goto(a.link);
  await reused.waitForFunction(() => document.querySelector("#conn-state")?.getAttribute("data-state") === "closed");
  if (!(await text(reused, "#error .error-text")).includes("works once"))
    throw new Error("a reused manager link did not say it works once");
  if (reused.url().includes("code=")) throw new Error(`a reused link stayed in the address bar: ${reused.url()}`);
  await reused.close();
  log("manager links hold a single-use code, gone from the address bar after load; a reload keeps the session");

  await mA.click("#pair-invite");
  const invite = await until("an invite on manager A", async () => {
    const v = await mA.inputValue("#invite-text");
    return v.startsWith("masq:") ? v : null;
  });
  await mA.waitForSelector("#invite-qr svg");
  await mB.fill("#join-input", invite);
  await mB.click("#join-button");
  // Both manager pages show the code and ask; nothing is stored before both say yes.
  await mA.waitForSelector("#pair-confirm:not([hidden])");
  await mB.waitForSelector("#pair-confirm:not([hidden])");
  const pairCode = (await text(mA, "#pair-code")).trim();
  if (!/^\d{6}$/.test(pairCode) || pairCode !== (await text(mB, "#pair-code")).trim())
    throw new Error(`the pairing codes differ or are missing: ${pairCode} vs ${await text(mB, "#pair-code")}`);
  await mB.click("#pair-yes");
  await new Promise((r) => setTimeout(r, 500));
  for (const d of [a.dir, b.dir]) {
    const listed = execFileSync(MASQ, ["--data", d, "devices", "list"], { encoding: "utf8" }).trim().split("\n");
    if (listed.length !== 1) throw new Error(`a device was stored before both users said yes: ${listed.join(" | ")}`);
  }
  await mA.click("#pair-yes");
  await mB.waitForFunction(() => document.querySelector("#pair-status")?.textContent.includes("Paired with laptop"));
  await mA.waitForFunction(() => document.querySelector("#pair-status")?.textContent.includes("Paired with phone"));
  const idA = await until("A's device id", () => mB.getAttribute("#devices [data-device]", "data-device"));
  const idB = await until("B's device id", () => mA.getAttribute("#devices [data-device]", "data-device"));
  const codeA = await text(mA, `#devices [data-device="${idB}"] .safety-code`);
  const codeB = await text(mB, `#devices [data-device="${idA}"] .safety-code`);
  if (!codeA.trim() || codeA.trim() !== codeB.trim())
    throw new Error(`safety codes differ or are missing: ${JSON.stringify(codeA)} vs ${JSON.stringify(codeB)}`);
  if (!(await mA.textContent("#pair-status")).includes(pairCode))
    throw new Error("the pairing status does not show the code both confirmed");
  await until("B shown online on A", async () => (await text(mA, `#devices [data-device="${idB}"] .online`)).trim() === "online");
  await until("A shown online on B", async () => (await text(mB, `#devices [data-device="${idA}"] .online`)).trim() === "online");
  log(`paired from the manager pages after both confirmed code ${pairCode}; key code ${codeA.trim()} listed on both; both online`);

  // ---- 2. The notes page on A waits for approval; approve it on A's manager.
  const notesOrigin = await serveNotes();
  const nA = await newPage(context, "notes A");
  await nA.goto(`${notesOrigin}/?store=${encodeURIComponent(a.http)}`);
  await nA.waitForSelector("#state[data-state=pending]");
  await shot(nA, "notes-pending");
  const pendingA = `#pending [data-origin="${notesOrigin}"]`;
  await mA.waitForSelector(pendingA);
  await shot(mA, "manager-pending");
  await mA.click(`${pendingA} button.approve`);
  await nA.waitForSelector("#state[data-state=ready]");
  await mA.waitForSelector(`#apps [data-origin="${notesOrigin}"]`);
  log("notes page approved on A's manager page");

  // Write a note on A.
  await nA.click("#new-note");
  await nA.waitForSelector("#notes li[data-doc]");
  const docId = await nA.getAttribute("#notes li[data-doc]", "data-doc");
  await nA.fill("#title", "Groceries");
  await nA.fill("#text", "milk\n");
  await nA.locator("#text").blur();
  await until("the note saved on A", async () => {
    const d = await nA.evaluate(async ([store, doc]) => {
      const { connect } = await import(`${store}/masq-client.js`);
      const m = await connect({ app: "notes", url: store });
      try {
        return await m.docs.read(doc);
      } finally {
        m.close();
      }
    }, [a.http, docId]);
    return d.title === "Groceries" && d.text === "milk\n";
  });
  log(`note ${docId} written on A`);

  // ---- 3. The note shows up in a notes page on B (approved on B's manager).
  const nB = await newPage(context, "notes B");
  await nB.goto(`${notesOrigin}/?store=${encodeURIComponent(b.http)}`);
  await nB.waitForSelector("#state[data-state=pending]");
  const pendingB = `#pending [data-origin="${notesOrigin}"]`;
  await mB.waitForSelector(pendingB);
  await mB.click(`${pendingB} button.approve`);
  await nB.waitForSelector("#state[data-state=ready]");
  const rowB = `#notes li[data-doc="${docId}"]`;
  await nB.waitForFunction((sel) => document.querySelector(sel)?.textContent.includes("Groceries"), rowB);
  log("the note from A shows up on B");

  // ---- 4. An edit on B shows up on A.
  await nB.click(rowB);
  await nB.waitForFunction(() => document.querySelector("#text")?.value === "milk\n");
  await nB.fill("#text", "milk\neggs\n");
  await nB.locator("#text").blur();
  // A shows the note open in its editor: the edit must appear there and in the list.
  await nA.locator("#title").blur();
  await nA.waitForFunction(() => document.querySelector("#text")?.value === "milk\neggs\n");
  log("the edit on B shows up on A");

  // ---- 4b. Sync preferences (M14): A's manager turns notes off towards B;
  // B's manager shows it; B's edits stop reaching A until it is back on.
  const sw = `#sync-grid input[data-app="notes"][data-device="${idB}"]`;
  await mA.waitForSelector(sw);
  if (!(await mA.isChecked(sw))) throw new Error("notes does not start on towards B");
  await mA.click(sw);
  await until("A's store keeps notes off towards B", () => {
    const v = JSON.parse(execFileSync(MASQ, ["--data", a.dir, "sync", "show"], { encoding: "utf8" }));
    return v.devices.find((d) => d.device === idB)?.apps?.notes === false;
  });
  await until("B's manager shows that A does not take notes", async () =>
    (await text(mB, `#sync-grid td:has(input[data-app="notes"][data-device="${idA}"]) .theirs`)).includes("they: off"),
  );
  await shot(mA, "manager-sync-prefs");
  await nB.fill("#text", "milk\neggs\nbread\n");
  await nB.locator("#text").blur();
  await until("B's edit stored on B", async () => {
    const d = JSON.parse(execFileSync(MASQ, ["--data", b.dir, "doc", "show", "--app", "notes", docId], { encoding: "utf8" }));
    return d.text === "milk\neggs\nbread\n";
  });
  // Several resync rounds of the daemons (a negative check, not a timing).
  await new Promise((r) => setTimeout(r, 2000));
  const onA = JSON.parse(execFileSync(MASQ, ["--data", a.dir, "doc", "show", "--app", "notes", docId], { encoding: "utf8" }));
  if (onA.text !== "milk\neggs\n") throw new Error(`B's edit reached A with notes off: ${JSON.stringify(onA)}`);
  await mA.click(sw);
  await nA.waitForFunction(() => document.querySelector("#text")?.value === "milk\neggs\nbread\n");
  log("the manager's switch turns notes off towards B (B's manager shows it; B's edit waits) and back on (it arrives)");
  await mA.click("#sync-paused");
  await until("A's store is paused", () =>
    JSON.parse(execFileSync(MASQ, ["--data", a.dir, "sync", "show"], { encoding: "utf8" })).paused === true,
  );
  await until("B's manager shows A paused", async () =>
    (await text(mB, `#sync-grid td:has(input[data-app="notes"][data-device="${idA}"]) .theirs`)).includes("they paused"),
  );
  await mA.click("#sync-paused");
  await until("A's store resumed", () =>
    JSON.parse(execFileSync(MASQ, ["--data", a.dir, "sync", "show"], { encoding: "utf8" })).paused === false,
  );
  log("the manager's pause switch pauses and resumes A's sync (B's manager shows it)");

  // The manager shows the app's document and that B has it.
  await mA.waitForSelector(`#app-data section.app[data-app="notes"] [data-doc="${docId}"]`);
  await mA.waitForFunction(
    ([sel]) => document.querySelector(sel)?.textContent.includes("in sync"),
    [`#app-data section.app[data-app="notes"] .sync [data-device="${idB}"]`],
  );
  await shot(mA, "manager");
  await shot(nA, "notes-a");
  await shot(nB, "notes-b");

  // ---- 5. A page from an origin nobody approved is refused.
  const otherOrigin = await serveNotes();
  const evil = await newPage(context, "unapproved page");
  await evil.goto(`${otherOrigin}/?store=${encodeURIComponent(a.http)}`);
  await evil.waitForSelector("#state[data-state=pending]");
  const probe = await evil.evaluate(
    async ([ws, token]) => {
      const talk = (url, msg) =>
        new Promise((res) => {
          const s = new WebSocket(url);
          const seen = [];
          s.onmessage = (e) => {
            seen.push(JSON.parse(e.data));
            if (seen.length === 1 && msg) s.send(JSON.stringify(msg));
            if (seen.length === 2) {
              s.close();
              res({ opened: true, seen });
            }
          };
          s.onclose = () => res({ opened: seen.length > 0, seen });
          setTimeout(() => res({ opened: seen.length > 0, seen, timeout: true }), 5000);
        });
      return {
        data: await talk(`${ws}?app=notes`, { id: 1, op: "doc.list" }),
        admin: await talk(`${ws}?token=${token}`, null),
      };
    },
    [a.ws, a.token],
  );
  const [state, answer] = probe.data.seen;
  if (state?.state !== "pending" || answer?.error?.code !== "not_approved")
    throw new Error(`an unapproved origin was not refused: ${JSON.stringify(probe.data)}`);
  if (probe.admin.opened) throw new Error(`a foreign page used the admin token: ${JSON.stringify(probe.admin)}`);
  if ((await evil.$$("#notes li[data-doc]")).length !== 0) throw new Error("an unapproved page shows notes");
  log("an unapproved origin gets not_approved and cannot use the admin token");
  const pendingEvil = `#pending [data-origin="${otherOrigin}"]`;
  await mA.waitForSelector(pendingEvil);
  await mA.click(`${pendingEvil} button.deny`);
  await evil.waitForSelector("#state[data-state=denied]");
  await shot(evil, "notes-denied");
  log("denying it on the manager page closes it");

  // ---- 6. Revoking the approved notes origin on A ends its access.
  await mA.click(`#apps [data-origin="${notesOrigin}"] button.revoke`);
  await nA.waitForSelector("#state[data-state=denied]");
  log("revoking the notes origin on A's manager page closes the notes page");

  log(`PASS; screenshots in ${ARTIFACTS}`);
}

function cleanup() {
  return cleanupAll([browser]);
}

main().then(
  async () => {
    await cleanup();
    process.exit(0);
  },
  async (e) => {
    console.error(`[browser-test] FAIL: ${e.stack || e}`);
    await cleanup();
    process.exit(1);
  },
);

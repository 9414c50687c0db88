// End-to-end test of browser peer mode's sync (issue M11, tests 2, 3 and 4)
// in real headless Chromium, with real `masq relay` and `masq store`
// processes: pages with no store are devices of their own, pair through the
// relay and sync, sealed, like any device.
//
//   web/client/build.sh && cargo build --release && cd tests/browser && npm ci && node sync.mjs
//
// What it checks:
// 2. store-app: a page (browser context "phone") joins an invite made by a
//    native store ("laptop", `masq pair invite`); both show the same pairing
//    code (the page's user is asked with it); the laptop lists the page under a name that says what it is;
//    writes on either side reach the other; concurrent edits of one text
//    converge.
// 3. app-app: a second browser context ("tablet", separate storage) joins
//    an invite made by the phone's page; both show one code, and nothing is
//    stored until the phone's user also said yes; the tablet learns the laptop through the
//    phone; writes converge on all three; removing the tablet on the phone
//    reaches the laptop.
// Also: examples/notes with no store pairs with the laptop from its devices
// panel (screenshot: target/browser/notes-devices.png) and gets its notes.
// 4. every byte the pages sent to (or got from) the relay is recorded: none
//    holds any of the keys, values or text the devices wrote.

import { spawn, execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";
import {
  root,
  MASQ,
  CHROMIUM,
  CHROMIUM_ARGS,
  ARTIFACTS,
  log,
  until,
  startRelay,
  startStore,
  serveDirs,
  freePort,
  newPage,
  cleanup,
  children,
} from "./harness.mjs";

const APP = "notes";
/** What the devices write, each unique: none may cross the relay in the clear. */
const SECRETS = {
  pageKey: "page-key-SECRET-4711",
  pageValue: "page-value-SECRET-0815",
  laptopKey: "laptop-key-SECRET-1234",
  laptopValue: "laptop-value-SECRET-5678",
  text: "shared-text-SECRET-2342",
  tabletValue: "tablet-value-SECRET-9999",
  otherAppValue: "photos-value-SECRET-3141",
};

let browser;

function expect(what, ok, got) {
  if (!ok) throw new Error(`${what}: got ${JSON.stringify(got)}`);
}

/** `masq --data <dir> args...` against the running store; its stdout (null if it failed). */
function cli(dir, args) {
  try {
    return execFileSync(MASQ, ["--data", dir, ...args], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }).trim();
  } catch (_) {
    return null;
  }
}

/** Records every frame `page` sends to or gets from the relay. */
function record(page, label, relay, wire) {
  page.on("websocket", (ws) => {
    if (!ws.url().startsWith(relay)) return;
    const keep = (dir) => (f) => wire.push({ label, dir, bytes: Buffer.from(f.payload) });
    ws.on("framesent", keep("sent"));
    ws.on("framereceived", keep("received"));
  });
}

/** A page of its own browser context (its own storage), in peer mode; its relay traffic is recorded. */
async function device(context, label, origin, relay, wire) {
  const page = await newPage(context, label);
  record(page, label, relay, wire);
  await page.goto(`${origin}/`);
  const state = await page.evaluate(async (app) => {
    const { connect } = await import("/client/masq-client.js");
    window.masq = await connect({ app, mode: "peer" });
    return window.masq.state;
  }, APP);
  expect(`${label}'s state`, state === "peer", state);
  pages.push([label, page]);
  return page;
}

/**
 * `masq pair invite --yes` on a store (this script compares the codes
 * itself: the CLI's and the page's): resolves to {uri, done} (done: the
 * CLI's stderr once it exits).
 */
function nativeInvite(dir) {
  const p = spawn(MASQ, ["--data", dir, "pair", "invite", "--yes"], { stdio: ["ignore", "pipe", "pipe"] });
  children.push(p);
  let out = "";
  let err = "";
  p.stderr.on("data", (d) => (err += d));
  const done = new Promise((res, rej) =>
    p.on("exit", (code) => (code === 0 ? res(err) : rej(new Error(`masq pair invite exited ${code}: ${err}`)))),
  );
  const uri = new Promise((res) =>
    p.stdout.on("data", (d) => {
      out += d;
      const line = out.split("\n").find((l) => l.startsWith("masq:"));
      if (line) res(line.trim());
    }),
  );
  return { uri, done };
}

async function main() {
  const relay = await startRelay();
  const laptop = await startStore("laptop", relay);
  const origin = await serveDirs({
    "/": join(root, "tests/browser/peer-page"),
    "/client/": join(root, "web/client"),
  });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true });
  const wire = [];
  const phone = await device(await browser.newContext(), "phone", origin, relay, wire);

  // ---- 2. Store-app: the page joins the laptop's invite.
  const invite = nativeInvite(laptop.dir);
  const uri = await invite.uri;
  // The page's user is asked with the code; the laptop's CLI prints it.
  const paired = await phone.evaluate(
    (uri) => window.masq.pair.join(uri, { confirm: (c) => ((window.shownCode = c.code), c.name === "laptop") }),
    uri,
  );
  const cliSays = await invite.done;
  const laptopCode = (cliSays.match(/Pairing code: (\d{6})/) || [])[1];
  const pageCode = await phone.evaluate(() => window.shownCode);
  expect("the page paired with the laptop", paired.name === "laptop", paired);
  expect("the page and the laptop showed one code", laptopCode && laptopCode === pageCode && pageCode === paired.safety_code, { laptopCode, pageCode, paired });
  const listed = await until("the laptop lists the page", () => {
    const list = cli(laptop.dir, ["devices", "list"]);
    return list && list.includes(" notes on ") ? list : null;
  });
  const pageName = (listed.match(/ (notes on [^\n]+?)  /) || [])[1];
  log(`store-app: the page joined the laptop's invite; the page's user confirmed code ${laptopCode}, the one the laptop showed; the laptop lists it as "${pageName}"`);

  await phone.evaluate((s) => window.masq.kv.put(s.pageKey, { v: s.pageValue }), SECRETS);
  await until("the page's write on the laptop", () => {
    const v = cli(laptop.dir, ["kv", "get", "--app", APP, SECRETS.pageKey]);
    return v && JSON.parse(v).v === SECRETS.pageValue;
  });
  cli(laptop.dir, ["kv", "put", "--app", APP, SECRETS.laptopKey, JSON.stringify(SECRETS.laptopValue)]);
  await until("the laptop's write in the page", () =>
    phone.evaluate((s) => window.masq.kv.get(s.laptopKey).then((v) => v === s.laptopValue), SECRETS),
  );
  log("store-app: a write on either side reaches the other");

  // Another app's data on the laptop never reaches the page (it said it
  // holds `notes` only, before the laptop offered anything).
  cli(laptop.dir, ["kv", "put", "--app", "photos", "private", JSON.stringify(SECRETS.otherAppValue)]);
  cli(laptop.dir, ["kv", "put", "--app", APP, "after-photos", "1"]);
  await until("a later write in the page", () => phone.evaluate(() => window.masq.kv.get("after-photos").then((v) => v === 1)));
  const pageStatus = await phone.evaluate(() => window.masq.pair.status());
  expect("no other app's message reached the page", pageStatus.sync && pageStatus.sync.other_apps === 0, pageStatus.sync);
  const laptopSees = await until("the laptop knows what the page takes", () => {
    const v = cli(laptop.dir, ["sync", "show"]);
    const d = v && JSON.parse(v).devices.find((x) => x.remote);
    return d ? d.remote : null;
  });
  expect("the page takes notes only", JSON.stringify(laptopSees.only) === JSON.stringify([APP]), laptopSees);
  const appView = await phone.evaluate(() => window.masq.sync.status());
  expect("the page's sync.status", appView.app === APP && appView.devices.length === 1 && appView.devices[0].on && appView.devices[0].takes === true, appView);
  log("store-app: the page says it holds notes only; the laptop's photos never reach it (0 messages of other apps)");

  // Concurrent edits of one text: both sides splice while the other does.
  const doc = await phone.evaluate((text) => window.masq.docs.create([{ op: "put_text", path: "/t", value: text }]), SECRETS.text);
  await until("the document on the laptop", () => {
    const v = cli(laptop.dir, ["doc", "show", "--app", APP, doc]);
    return v && JSON.parse(v).t === SECRETS.text;
  });
  const edits = 20;
  await Promise.all([
    phone.evaluate(
      async ({ doc, edits }) => {
        for (let i = 0; i < edits; i++) await window.masq.docs.change(doc, [{ op: "splice", path: "/t", index: 0, insert: "P" }]);
      },
      { doc, edits },
    ),
    (async () => {
      for (let i = 0; i < edits; i++) {
        const t = JSON.parse(cli(laptop.dir, ["doc", "show", "--app", APP, doc])).t;
        cli(laptop.dir, ["doc", "edit", "--app", APP, doc, JSON.stringify([{ op: "splice", path: "/t", index: t.length, insert: "L" }])]);
      }
    })(),
  ]);
  const converged = await until("the text converges", async () => {
    const here = await phone.evaluate((doc) => window.masq.docs.read(doc).then((d) => d.t), doc);
    const there = JSON.parse(cli(laptop.dir, ["doc", "show", "--app", APP, doc]) || "{}").t;
    const count = (s, c) => s.split(c).length - 1;
    return here === there && count(here, "P") === edits && count(here, "L") === edits ? here : null;
  });
  expect("both sides' edits are in the text", converged.includes(SECRETS.text), converged);
  log(`store-app: ${edits} concurrent edits on each side converge to the same text`);

  // ---- 3. App-app: a second browser context joins the phone's invite.
  const tablet = await device(await browser.newContext(), "tablet", origin, relay, wire);
  // First the tablet's user says no: both ends fail, nothing is stored.
  const declineOffer = await phone.evaluate(async () => {
    const inv = await window.masq.pair.invite(undefined, { confirm: () => true });
    window.declined = inv.paired.then(() => "paired?", (e) => e.code);
    return inv.invite;
  });
  const declinedHere = await tablet.evaluate(
    (uri) => window.masq.pair.join(uri, { confirm: () => false }).then(() => "paired?", (e) => e.code),
    declineOffer,
  );
  const declinedThere = await phone.evaluate(() => window.declined);
  const afterNo = [await phone.evaluate(() => window.masq.pair.devices()), await tablet.evaluate(() => window.masq.pair.devices())];
  expect(
    "a no on the tablet ends the pairing on both, nothing stored",
    declinedHere === "pairing_declined" && declinedThere === "pairing_failed" && afterNo[0].devices.length === 1 && afterNo[1].devices.length === 0,
    { declinedHere, declinedThere, afterNo },
  );
  log("app-app: the tablet's user said no to the code: both ends fail and nothing is stored");
  const offer = await phone.evaluate(async () => {
    const inv = await window.masq.pair.invite();
    window.phoneInvite = inv;
    window.pairedTablet = inv.paired;
    return { invite: inv.invite, svg: inv.qr_svg };
  });
  expect("the invite has a QR code", offer.svg.startsWith("<svg") || offer.svg.includes("<svg"), offer.svg.slice(0, 40));
  // The tablet's user says yes at once; the phone's answers by hand after
  // its code showed: until then nothing is stored on either.
  const joining = tablet.evaluate(
    (uri) => window.masq.pair.join(uri, { confirm: (c) => ((window.tabletCode = c.code), true) }),
    offer.invite,
  );
  const phoneCode = await phone.evaluate(() => window.phoneInvite.code.then((c) => c.code));
  const tabletCode = await until("the tablet's code", () => tablet.evaluate(() => window.tabletCode || null));
  expect("the phone and the tablet show one code", phoneCode === tabletCode, { phoneCode, tabletCode });
  await new Promise((r) => setTimeout(r, 500));
  const phoneBefore = await phone.evaluate(() => window.masq.pair.devices());
  const tabletBefore = await tablet.evaluate(() => window.masq.pair.devices());
  expect("nothing is stored before the phone's user said yes", phoneBefore.devices.length === 1 && tabletBefore.devices.length === 0, { phoneBefore, tabletBefore });
  await phone.evaluate(() => window.phoneInvite.confirm(true));
  const joined = await joining;
  const inviterSide = await phone.evaluate(() => window.pairedTablet);
  expect("the tablet paired with the phone", joined.name.startsWith("notes on "), joined);
  expect("the app-app safety codes are equal", joined.safety_code === inviterSide.safety_code, { joined, inviterSide });
  expect("the tablet learned the laptop through the phone", joined.also_learned === 1, joined);
  log(`app-app: the tablet joined the phone's invite; both confirmed code ${joined.safety_code}, nothing stored before the second yes; it learned 1 more device`);

  await until("the tablet has the phone's and the laptop's writes", () =>
    tablet.evaluate(
      (s) => Promise.all([window.masq.kv.get(s.pageKey), window.masq.kv.get(s.laptopKey)]).then(([a, b]) => a && a.v === s.pageValue && b === s.laptopValue),
      SECRETS,
    ),
  );
  await tablet.evaluate((s) => window.masq.kv.put("from-tablet", s.tabletValue), SECRETS);
  await until("the tablet's write on the phone and the laptop", async () => {
    const onPhone = await phone.evaluate(() => window.masq.kv.get("from-tablet"));
    const onLaptop = cli(laptop.dir, ["kv", "get", "--app", APP, "from-tablet"]);
    return onPhone === SECRETS.tabletValue && onLaptop && JSON.parse(onLaptop) === SECRETS.tabletValue;
  });
  await until("the laptop knows the tablet", () => (cli(laptop.dir, ["devices", "list"]) || "").split("notes on ").length - 1 === 2);
  log("app-app: writes converge on the phone, the tablet and the laptop (which learned the tablet from the phone)");

  const devices = await phone.evaluate(() => window.masq.pair.devices());
  expect("the phone lists the laptop and the tablet", devices.devices.length === 2, devices);
  const tabletId = devices.devices.find((d) => d.device !== paired.device_id).device;
  await phone.evaluate((id) => window.masq.pair.remove(id), tabletId);
  await until("the laptop forgets the removed tablet", () => (cli(laptop.dir, ["devices", "list"]) || "").split("notes on ").length - 1 === 1);
  log("removing the tablet on the phone reaches the laptop");

  // ---- examples/notes with no store offers pairing: it joins the laptop
  // from its devices panel, and the laptop's notes come in.
  const notesOrigin = await serveDirs({
    "/examples/notes/": join(root, "examples/notes"),
    "/web/client/": join(root, "web/client"),
  });
  const notesPage = await newPage(await browser.newContext(), "notes");
  record(notesPage, "notes", relay, wire);
  const noStore = `http://127.0.0.1:${await freePort()}`;
  await notesPage.goto(`${notesOrigin}/examples/notes/?store=${noStore}&relay=${encodeURIComponent(relay)}`);
  await notesPage.waitForSelector("#state[data-state=peer]");
  await notesPage.waitForSelector("#devices:not([hidden])");
  await notesPage.click("#devices summary");
  const noteInvite = nativeInvite(laptop.dir);
  await notesPage.fill("#pair-join-uri", await noteInvite.uri);
  await notesPage.click("#pair-join");
  // The notes page shows the code and asks; the user compares it with the laptop's.
  await notesPage.waitForSelector("#pair-check:not([hidden])");
  const shownInNotes = (await notesPage.textContent("#pair-code")).trim();
  await notesPage.click("#pair-yes");
  const notesSays = await noteInvite.done;
  const notesCode = (notesSays.match(/Pairing code: (\d{6})/) || [])[1];
  expect("the notes page and the laptop showed one code", notesCode === shownInNotes, { notesCode, shownInNotes });
  await until("the notes page says it paired, with the code both confirmed", async () =>
    (await notesPage.textContent("#pair-status")).includes(`Paired with laptop. Both devices confirmed code ${notesCode}`),
  );
  cli(laptop.dir, ["doc", "create", "--app", APP, "--json", JSON.stringify({ title: "From the laptop", text: "hello\n", updated: Date.now() })]);
  await until("the laptop's note in the notes page", async () => (await notesPage.textContent("#notes")).includes("From the laptop"));
  await until("the laptop shows online in the devices panel", () =>
    notesPage.evaluate(() => !!document.querySelector("#device-list .dot.online")),
  );
  mkdirSync(ARTIFACTS, { recursive: true });
  await notesPage.screenshot({ path: join(ARTIFACTS, "notes-devices.png"), fullPage: true });
  log("examples/notes with no store: pairs with the laptop from its devices panel; the laptop's note comes in");

  // ---- 4. The relay saw no plaintext of what anyone wrote.
  const sent = wire.filter((w) => w.dir === "sent").length;
  expect("the pages talked to the relay", sent > 10 && wire.length > 20, wire.length);
  for (const [name, secret] of Object.entries(SECRETS)) {
    const hit = wire.find((w) => w.bytes.includes(Buffer.from(secret)));
    expect(`no frame holds ${name}`, !hit, hit && { label: hit.label, dir: hit.dir });
  }
  const bytes = wire.reduce((n, w) => n + w.bytes.length, 0);
  log(`the relay saw ${wire.length} frames (${bytes} bytes) of the pages: none holds any key, value or text written`);
  log("PASS");
}

/** The pages' sync status, for a failure's report. */
const pages = [];
async function report() {
  for (const [label, page] of pages) {
    const status = await page.evaluate(() => window.masq.pair.status()).catch((e) => String(e));
    log(`${label}'s status: ${JSON.stringify(status)}`);
  }
}

main()
  .then(() => cleanup([browser]))
  .catch(async (e) => {
    console.error(e);
    await report().catch(() => {});
    await cleanup([browser]);
    process.exit(1);
  });

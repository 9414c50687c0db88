// What the browser suites share: real masq processes, static servers on
// their own origins, headless Chromium with this machine's flags, and
// polling with a limit. Each suite cleans up with `cleanup()`.

import { spawn, execFileSync } from "node:child_process";
import { readFileSync, rmSync, existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { createServer } from "node:http";
import { createServer as createNetServer } from "node:net";
import { join, resolve, extname, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const root = resolve(here, "../..");
export const MASQ = resolve(process.env.MASQ_BIN || join(root, "target/release/masq"));
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
export const ARTIFACTS = resolve(process.env.MASQ_ARTIFACTS || join(root, "target/browser"));
/** How long one expectation may take (sync through a relay included). */
export const STEP_TIMEOUT_MS = 30_000;
/**
 * Chromium's flags here: headless, and no background networking (this
 * machine's closed network refuses it, many connections at a time).
 */
export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

export const children = [];
export const servers = [];
export const temps = [];

export function log(msg) {
  console.log(`[browser-test] ${msg}`);
}

export function freePort() {
  return new Promise((res, rej) => {
    const s = createNetServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

export async function until(what, fn, timeout = STEP_TIMEOUT_MS) {
  const start = Date.now();
  let last;
  while (Date.now() - start < timeout) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ""}`);
}

/** Starts `masq args...`; logs its stderr tail if it exits unasked. */
export function run(args) {
  const p = spawn(MASQ, args, { stdio: ["ignore", "pipe", "pipe"] });
  let err = "";
  // The log (tracing writes to stdout, errors to stderr): its tail, for a failure's report.
  const keep = (d) => (err = (err + d).slice(-20000));
  p.stdout.on("data", keep);
  p.stderr.on("data", keep);
  p.logTail = () => err;
  p.on("exit", (code, sig) => {
    if (!p.stopping) log(`masq ${args.join(" ")} exited (${code ?? sig}): ${err}`);
  });
  children.push(p);
  return p;
}

/** Starts `masq relay` on a free port; resolves to its ws:// URL once it serves. */
export async function startRelay() {
  const port = await freePort();
  run(["relay", "--listen", `127.0.0.1:${port}`]);
  await until("the relay", async () => (await fetch(`http://127.0.0.1:${port}/healthz`)).ok);
  return `ws://127.0.0.1:${port}`;
}

/**
 * Starts a `masq store` named `name` in a temp data dir, syncing through
 * `relay`; resolves to {name, dir, http, ws, token, link} once it serves.
 */
export async function startStore(name, relay) {
  const dir = mkdtempSync(join(tmpdir(), `masq-browser-${name}-`));
  temps.push(dir);
  execFileSync(MASQ, ["--data", dir, "devices", "name", name]);
  const p = run(["--data", dir, "store", "--listen", "127.0.0.1:0", "--relay", relay]);
  const info = await until(`store ${name}'s store.json`, () => {
    const f = join(dir, "store.json");
    if (!existsSync(f)) return null;
    const i = JSON.parse(readFileSync(f, "utf8"));
    return i.pid === p.pid ? i : null;
  });
  // The link comes from the CLI, as a user would get it.
  const link = execFileSync(MASQ, ["--data", dir, "manager"], { encoding: "utf8" }).trim();
  return { name, dir, http: info.http_url, ws: info.ws_url, token: info.admin_token, link, proc: p };
}

const TYPES = {
  ".html": "text/html",
  ".js": "text/javascript",
  ".mjs": "text/javascript",
  ".css": "text/css",
  ".md": "text/plain",
  ".wasm": "application/wasm",
  ".json": "application/json",
  ".ts": "text/plain",
};

/**
 * Serves directories on a port of its own (its own origin): `mounts` maps a
 * URL prefix ("/" or "/client/") to a directory. Returns the origin.
 */
export async function serveDirs(mounts) {
  const server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
    const mount = Object.keys(mounts)
      .sort((a, b) => b.length - a.length)
      .find((m) => path.startsWith(m));
    if (!mount) return res.writeHead(404).end("not found");
    const base = mounts[mount];
    const rel = path.slice(mount.length) || "index.html";
    const file = resolve(base, rel);
    if (!file.startsWith(base) || !existsSync(file)) return res.writeHead(404).end("not found");
    res.writeHead(200, { "content-type": TYPES[extname(file)] || "application/octet-stream" });
    res.end(readFileSync(file));
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  servers.push(server);
  return `http://127.0.0.1:${server.address().port}`;
}

export async function newPage(context, label) {
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  page.on("pageerror", (e) => log(`${label}: page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") log(`${label}: console: ${m.text()}`);
  });
  return page;
}

/** Stops every server and process the suite started, removes its temp dirs. */
export async function cleanup(browsers = []) {
  for (const b of browsers) if (b) await b.close().catch(() => {});
  for (const s of servers) s.close();
  for (const p of children) {
    p.stopping = true;
    p.kill("SIGTERM");
  }
  await new Promise((r) => setTimeout(r, 300));
  for (const d of temps) rmSync(d, { recursive: true, force: true });
}

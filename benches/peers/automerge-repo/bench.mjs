#!/usr/bin/env node
// automerge-repo side of the masq M9 side-by-side benchmark.
//
//   node bench.mjs --workload a|b|c [--edits N] [--docs N] [--seconds N]
//                  [--rate N] [--timeout S] [--yield-every N] [--batch N]
//                  [--processes 3|1] [--tmpdir DIR]
//
// Runs ONE workload and prints ONE JSON line on stdout. Diagnostics go to
// stderr. See README.md for what is measured and how.
//
// By default the sync server, peer A and peer B each run in their own Node
// process (this file, forked with --role), as they would in a deployment: the
// sync server is its own process, the two peers are two devices. The parent
// process only runs the byte-counting proxy and coordinates the run over IPC.
// --processes 1 runs all three repos in one process (one JS thread).

import fs from "node:fs"
import net from "node:net"
import os from "node:os"
import path from "node:path"
import { fork } from "node:child_process"
import { performance } from "node:perf_hooks"
import { createRequire } from "node:module"
import { fileURLToPath } from "node:url"

import { Repo } from "@automerge/automerge-repo"
import {
  WebSocketClientAdapter,
  WebSocketServerAdapter,
} from "@automerge/automerge-repo-network-websocket"
import { NodeFSStorageAdapter } from "@automerge/automerge-repo-storage-nodefs"
import { WebSocketServer } from "ws"

// automerge-repo reports some errors with console.log; keep stdout for the
// one JSON line.
console.log = (...args) => console.error(...args)

const SERVER_PEER_ID = "storage-server-bench"

// Set once the run is over and the repos are being shut down. automerge-repo
// 2.5.6's WebSocketClientAdapter can throw an unhandled 'error' event when it
// is shut down while a reconnect is in flight; from then on that is ignored.
let shuttingDown = false

// ---------------------------------------------------------------- arguments

function usage(msg) {
  if (msg) process.stderr.write(`bench.mjs: ${msg}\n`)
  process.stderr.write(
    "usage: node bench.mjs --workload a|b|c [--edits N] [--docs N] [--seconds N] [--rate N]\n" +
      "                      [--timeout S] [--yield-every N] [--batch N] [--processes 3|1] [--tmpdir DIR]\n",
  )
  process.exit(2)
}

function parseArgs(argv) {
  const opts = {
    workload: null,
    role: null,
    edits: 100_000,
    docs: 10_000,
    seconds: 60,
    rate: 100,
    timeout: 300,
    yieldEvery: null, // a: 0, b: 100
    batch: 1000,
    processes: 3,
    tmpdir: os.tmpdir(),
  }
  const numeric = {
    "--edits": "edits",
    "--docs": "docs",
    "--seconds": "seconds",
    "--rate": "rate",
    "--timeout": "timeout",
    "--yield-every": "yieldEvery",
    "--batch": "batch",
    "--processes": "processes",
  }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === "-h" || a === "--help") usage()
    if (a === "--workload") {
      opts.workload = argv[++i]
      continue
    }
    if (a === "--role") {
      // internal: this process is a child running one repo
      opts.role = argv[++i]
      continue
    }
    if (a === "--tmpdir") {
      opts.tmpdir = argv[++i]
      if (!opts.tmpdir) usage("--tmpdir needs a directory")
      continue
    }
    if (a in numeric) {
      const v = Number(argv[++i])
      if (!Number.isFinite(v) || v < 0) usage(`bad value for ${a}`)
      opts[numeric[a]] = v
      continue
    }
    usage(`unknown argument ${a}`)
  }
  if (opts.role) return opts
  if (!["a", "b", "c"].includes(opts.workload)) usage("--workload a|b|c is required")
  if (opts.workload === "a" && !(Number.isInteger(opts.edits) && opts.edits >= 1))
    usage("--edits must be a positive integer")
  if (opts.workload === "b" && !(Number.isInteger(opts.docs) && opts.docs >= 1))
    usage("--docs must be a positive integer")
  if (opts.workload === "c" && !(opts.seconds > 0 && opts.rate > 0))
    usage("--seconds and --rate must be > 0")
  if (![1, 3].includes(opts.processes)) usage("--processes must be 3 or 1")
  // (a): one synchronous loop by default, so its changes go out in few sync
  // messages (see README). (b): give the event loop a turn every 100 creates
  // on A and every 100 finds on B, so that the peers keep answering the sync
  // server's keepalive pings.
  if (opts.yieldEvery === null) opts.yieldEvery = opts.workload === "b" ? 100 : 0
  return opts
}

const opts = parseArgs(process.argv.slice(2))
const tag = opts.role ? `amrepo-bench:${opts.role}` : "amrepo-bench"
const log = (...args) => process.stderr.write(`[${tag}] ${args.join(" ")}\n`)

// ------------------------------------------------------------------ helpers

const sleep = ms => new Promise(r => setTimeout(r, ms))
const yieldToLoop = () => new Promise(r => setImmediate(r))
/** Wall clock with sub-millisecond resolution, comparable across processes. */
const epochNow = () => performance.timeOrigin + performance.now()

class TimeoutError extends Error {}

function sameHeads(h1, h2) {
  if (!h1 || !h2 || h1.length !== h2.length) return false
  const a = [...h1].sort()
  const b = [...h2].sort()
  return a.every((x, i) => x === b[i])
}

/**
 * Resolve when pred() is true, checking once now, on each `event` of
 * `emitter`, and (if pollMs > 0) every pollMs as a fallback.
 */
function waitFor(emitter, event, pred, deadlineMs, what, pollMs = 0) {
  return new Promise((resolve, reject) => {
    if (pred()) return resolve()
    let timer, poller
    const onEvent = () => {
      let ok = false
      try {
        ok = pred()
      } catch (e) {
        cleanup()
        return reject(e)
      }
      if (ok) {
        cleanup()
        resolve()
      }
    }
    const cleanup = () => {
      clearTimeout(timer)
      clearInterval(poller)
      emitter.off(event, onEvent)
    }
    emitter.on(event, onEvent)
    if (pollMs > 0) poller = setInterval(onEvent, pollMs)
    timer = setTimeout(() => {
      cleanup()
      reject(new TimeoutError(`timed out waiting for ${what}`))
    }, Math.max(0, deadlineMs - Date.now()))
  })
}

/** A promise that rejects with a TimeoutError at deadlineMs; cancel() stops it. */
function rejectAt(deadlineMs, what) {
  let timer
  const p = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new TimeoutError(`timed out waiting for ${what}`)),
      Math.max(0, deadlineMs - Date.now()),
    )
  })
  p.catch(() => {})
  p.cancel = () => clearTimeout(timer)
  return p
}

/** Resolve when poll() (may be async) is true, polling every `everyMs`. */
async function pollUntil(poll, deadlineMs, what, everyMs = 10) {
  while (!(await poll())) {
    if (Date.now() > deadlineMs) throw new TimeoutError(`timed out waiting for ${what}`)
    await sleep(everyMs)
  }
}

/** Nearest-rank percentile over an ascending-sorted array. */
function percentile(sorted, p) {
  if (sorted.length === 0) return null
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length))
  return sorted[rank - 1]
}

const round3 = x => (x == null ? null : Math.round(x * 1000) / 1000)

function cpuSeconds(delta) {
  return (delta.user + delta.system) / 1e6
}

function versions() {
  const require = createRequire(import.meta.url)
  const v = {}
  for (const name of [
    "@automerge/automerge-repo",
    "@automerge/automerge-repo-network-websocket",
    "@automerge/automerge-repo-storage-nodefs",
    "@automerge/automerge",
    "ws",
  ]) {
    try {
      // package.json of each package, found next to its resolved entry point
      let dir = path.dirname(require.resolve(name))
      for (;;) {
        const pj = path.join(dir, "package.json")
        if (fs.existsSync(pj)) {
          const j = JSON.parse(fs.readFileSync(pj, "utf8"))
          if (j.name === name) {
            v[name] = j.version
            break
          }
        }
        const up = path.dirname(dir)
        if (up === dir) break
        dir = up
      }
    } catch {
      v[name] = null
    }
  }
  v.node = process.versions.node
  return v
}

// ---------------------------------------------------------------------- RPC
//
// The parent drives each repo ("role") through a tiny request/response
// protocol. With --processes 3 the messages go over the child-process IPC
// channel; with --processes 1 over an in-process queue.

class Endpoint {
  #send
  #next = 1
  #pending = new Map()
  #handlers = {}
  constructor(send) {
    this.#send = send
  }
  serve(handlers) {
    this.#handlers = handlers
  }
  call(method, args = {}) {
    const id = this.#next++
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject })
      this.#send({ t: "call", id, method, args })
    })
  }
  failAll(err) {
    for (const { reject } of this.#pending.values()) reject(err)
    this.#pending.clear()
  }
  async receive(msg) {
    if (msg.t === "ret") {
      const p = this.#pending.get(msg.id)
      if (!p) return
      this.#pending.delete(msg.id)
      if (msg.ok) p.resolve(msg.value)
      else p.reject(msg.timeout ? new TimeoutError(msg.error) : new Error(msg.error))
    } else if (msg.t === "call") {
      const h = this.#handlers[msg.method]
      try {
        if (!h) throw new Error(`no such method ${msg.method}`)
        const value = await h(msg.args)
        this.#send({ t: "ret", id: msg.id, ok: true, value })
      } catch (e) {
        this.#send({
          t: "ret",
          id: msg.id,
          ok: false,
          timeout: e instanceof TimeoutError,
          error: e instanceof TimeoutError ? e.message : (e?.stack ?? String(e)),
        })
      }
    }
  }
}

function localPair() {
  let a, b
  a = new Endpoint(m => setImmediate(() => b.receive(m)))
  b = new Endpoint(m => setImmediate(() => a.receive(m)))
  return [a, b]
}

// -------------------------------------------------------------------- roles

/**
 * Sync server, configured like automerge-repo's sync-server
 * (automerge-repo-sync-server): a Repo with a WebSocketServerAdapter, NodeFS
 * storage and a share policy that never announces documents (it only serves
 * documents peers ask for).
 */
function serverRole(dir) {
  let wss, repo
  let closing = false
  return {
    async init() {
      wss = new WebSocketServer({ host: "127.0.0.1", port: 0 })
      await new Promise((resolve, reject) => {
        wss.once("listening", resolve)
        wss.once("error", reject)
      })
      repo = new Repo({
        network: [new WebSocketServerAdapter(wss)],
        storage: new NodeFSStorageAdapter(dir),
        peerId: SERVER_PEER_ID,
        sharePolicy: async () => false,
      })
      repo.networkSubsystem.on("peer-disconnected", ({ peerId }) => closing || log(`${peerId} disconnected`))
      return { port: wss.address().port }
    },
    peers: () => repo.peers,
    flush: () => repo.flush(),
    quiet() {
      closing = shuttingDown = true
    },
    async shutdown() {
      closing = true
      await repo.shutdown()
      await new Promise(r => wss.close(() => r()))
    },
  }
}

/** Peer A or B: default (generous) share policy and its own NodeFS storage. */
function peerRole(name, dir) {
  let repo
  let closing = false
  let handle // the shared document of (a) and (c)
  // (b)
  const b = { nDone: 0, unavailableFirst: 0 }
  // (c)
  const c = { sentAt: [], seenAt: [], nSeen: 0, expect: 0, prefix: null }

  const complete = (h, j) => {
    if (!h.isReady()) return false
    const d = h.doc()
    for (let k = 0; k < 10; k++) if (d[`k${k}`] !== j * 10 + k) return false
    return true
  }

  return {
    async init({ url }) {
      repo = new Repo({
        network: [new WebSocketClientAdapter(url)],
        storage: new NodeFSStorageAdapter(dir),
        peerId: `peer-${name}`,
      })
      const adapter = repo.networkSubsystem.adapters[0]
      adapter.on("peer-disconnected", ({ peerId }) => closing || log(`disconnected from ${peerId}`))
    },
    connected: () => repo.peers.includes(SERVER_PEER_ID),
    flush: () => repo.flush(),
    quiet() {
      closing = shuttingDown = true
    },
    shutdown() {
      closing = true
      return repo.shutdown()
    },

    /**
     * Create an empty document and wait until the sync server has stored it
     * (A's sync state with the server reports A's heads). Waiting matters: if
     * B asks before the server has the document, the server answers
     * "unavailable", and because the document is empty its arrival on the
     * server emits no "change" event, so the server never pushes it to B.
     */
    async createEmpty({ deadline }) {
      handle = repo.create()
      await pollUntil(
        () => {
          const sid = repo.getStorageIdOfPeer(SERVER_PEER_ID)
          return sid && sameHeads(handle.getSyncInfo(sid)?.lastHeads, handle.heads())
        },
        deadline,
        "the sync server to store the new document",
      )
      return handle.url
    },
    async find({ url }) {
      handle = await repo.find(url)
    },

    // (a) --------------------------------------------------------------
    async editLoop({ n, yieldEvery }) {
      const t0 = performance.now()
      for (let i = 0; i < n; i++) {
        handle.change(d => {
          d[`k${i % 100}`] = i
        })
        if (yieldEvery > 0 && (i + 1) % yieldEvery === 0) await yieldToLoop()
      }
      return { heads: handle.heads(), loopMs: performance.now() - t0 }
    },
    async waitHeads({ heads, key, value, deadline }) {
      await waitFor(
        handle,
        "heads-changed",
        () => handle.doc()[key] === value && sameHeads(handle.heads(), heads),
        deadline,
        `peer ${name} to receive all edits`,
      )
    },
    changes: () => handle.metrics().numChanges,

    // (b) --------------------------------------------------------------
    async createDocs({ first, last, yieldEvery }) {
      const urls = []
      for (let j = first; j < last; j++) {
        const init = {}
        for (let k = 0; k < 10; k++) init[`k${k}`] = j * 10 + k
        urls.push(repo.create(init).url)
        if (yieldEvery > 0 && (j + 1) % yieldEvery === 0) await yieldToLoop()
      }
      return urls
    },
    async fetchDocs({ urls, first, deadline, yieldEvery }) {
      // B gets document j by its URL (handed over out of band).
      const fetchOne = async (url, j) => {
        const h = await repo.find(url, { allowableStates: ["ready", "unavailable"] })
        if (h.isReady()) {
          await waitFor(h, "heads-changed", () => complete(h, j), deadline, `document ${j} on B`)
        } else {
          // The server did not have it yet and said so; it pushes the
          // document when A's copy arrives. The handle turns "ready" only
          // after its "heads-changed" event, so poll as well.
          b.unavailableFirst++
          await waitFor(h, "heads-changed", () => complete(h, j), deadline, `document ${j} on B`, 20)
        }
        b.nDone++
      }
      const all = []
      for (let i = 0; i < urls.length; i++) {
        all.push(fetchOne(urls[i], first + i))
        if (yieldEvery > 0 && (i + 1) % yieldEvery === 0) await yieldToLoop()
      }
      await Promise.all(all)
    },
    docsProgress: () => ({ done: b.nDone, unavailableFirst: b.unavailableFirst }),

    // (c) --------------------------------------------------------------
    /** Watch the other side's keys (`prefix`) and note when each first shows up. */
    watch({ prefix, expect }) {
      c.prefix = prefix
      c.expect = expect
      c.seenAt = new Array(expect).fill(null)
      handle.on("change", ({ patches }) => {
        const now = epochNow()
        for (const p of patches) {
          if (p.action !== "put" || p.path.length !== 1) continue
          const key = p.path[0]
          if (typeof key !== "string" || key[0] !== prefix) continue
          const n = Number(key.slice(1))
          if (!(n >= 0 && n < expect) || c.seenAt[n] !== null) continue
          c.seenAt[n] = now
          c.nSeen++
        }
      })
    },
    /**
     * Write `rate` edits/s for `seconds` (key prefix + n, value Date.now()). A
     * 5 ms ticker brings the count up to floor(elapsed * rate) + 1, so the
     * rate holds even when a tick is late.
     */
    async write({ prefix, seconds, rate }) {
      const perPeer = Math.floor(seconds * rate)
      const t0 = performance.now()
      await new Promise(resolve => {
        const tick = () => {
          const elapsed = (performance.now() - t0) / 1000
          const target = Math.min(perPeer, Math.floor(elapsed * rate) + 1)
          while (c.sentAt.length < target) {
            const n = c.sentAt.length
            c.sentAt.push(epochNow())
            handle.change(d => {
              d[`${prefix}${n}`] = Date.now()
            })
          }
          if (c.sentAt.length >= perPeer && elapsed >= seconds) {
            clearInterval(timer)
            resolve()
          }
        }
        const timer = setInterval(tick, 5)
        tick()
      })
      return { writeMs: performance.now() - t0 }
    },
    cstate: () => ({ sent: c.sentAt.length, seen: c.nSeen, heads: handle.heads() }),
    latencyData: () => ({ sentAt: c.sentAt, seenAt: c.seenAt }),
  }
}

/** Handlers every role process has, for measuring itself. */
function measureHandlers() {
  let cpu0 = null
  return {
    mark() {
      cpu0 = process.cpuUsage()
    },
    report() {
      return {
        cpu_seconds: cpu0 ? cpuSeconds(process.cpuUsage(cpu0)) : null,
        peak_rss_mib: process.resourceUsage().maxRSS / 1024,
      }
    },
  }
}

function makeRole(role, tmp) {
  return role === "server" ? serverRole(path.join(tmp, "server")) : peerRole(role, path.join(tmp, role))
}

// -------------------------------------------------------------- the network

/**
 * A TCP proxy in front of the sync server: every byte read from either side
 * (client->server and server->client) is added to `proxy.bytes` before it is
 * forwarded. These are TCP payload bytes, i.e. WebSocket frames including
 * their headers (and the HTTP upgrade handshake), not counting TCP/IP headers.
 */
function startProxy(targetPort) {
  const proxy = { bytes: 0, sockets: new Set(), server: null, port: 0 }
  proxy.server = net.createServer(client => {
    const upstream = net.connect({ host: "127.0.0.1", port: targetPort })
    for (const s of [client, upstream]) {
      s.setNoDelay(true) // no Nagle delay added by the proxy hop
      proxy.sockets.add(s)
      s.on("close", () => proxy.sockets.delete(s))
    }
    client.on("data", d => (proxy.bytes += d.length))
    upstream.on("data", d => (proxy.bytes += d.length))
    client.pipe(upstream)
    upstream.pipe(client)
    client.on("error", () => upstream.destroy())
    upstream.on("error", () => client.destroy())
    client.on("close", () => upstream.destroy())
    upstream.on("close", () => client.destroy())
  })
  return new Promise((resolve, reject) => {
    proxy.server.once("error", reject)
    proxy.server.listen(0, "127.0.0.1", () => {
      proxy.port = proxy.server.address().port
      resolve(proxy)
    })
  })
}

// ------------------------------------------------------------ the processes

/** Start one role, in a child process (split) or in this process. */
function startRole(role, tmp, split, env) {
  if (!split) {
    const [parentEnd, roleEnd] = localPair()
    roleEnd.serve(makeRole(role, tmp))
    return { role, ep: parentEnd, child: null }
  }
  const child = fork(fileURLToPath(import.meta.url), ["--role", role, "--tmpdir", tmp], {
    // the child's stdout goes to our stderr: stdout carries only the JSON line
    stdio: ["ignore", 2, 2, "ipc"],
    serialization: "advanced",
  })
  const ep = new Endpoint(m => child.connected && child.send(m))
  child.on("message", m => ep.receive(m))
  child.on("exit", (code, signal) => {
    if (!env.closing) {
      const err = new Error(`the ${role} process exited (code ${code}, signal ${signal})`)
      env.failed = err
      ep.failAll(err)
    }
  })
  return { role, ep, child }
}

/** Child-process entry point: serve one role over IPC until told to exit. */
async function childMain() {
  const role = makeRole(opts.role, opts.tmpdir)
  const ep = new Endpoint(m => process.connected && process.send(m))
  ep.serve({
    ...role,
    ...measureHandlers(),
    exit() {
      setImmediate(() => process.exit(0))
    },
  })
  process.on("message", m => ep.receive(m))
  process.on("disconnect", () => process.exit(0))
}

async function setup(tmp, split) {
  const env = { split, closing: false, failed: null }
  env.server = startRole("server", tmp, split, env)
  const { port } = await env.server.ep.call("init")
  env.proxy = await startProxy(port)
  const url = `ws://127.0.0.1:${env.proxy.port}`
  env.A = startRole("a", tmp, split, env)
  env.B = startRole("b", tmp, split, env)
  await Promise.all([env.A.ep.call("init", { url }), env.B.ep.call("init", { url })])
  env.roles = [env.server, env.A, env.B]

  const deadline = Date.now() + 30_000
  await pollUntil(
    async () => {
      const [a, b, peers] = await Promise.all([
        env.A.ep.call("connected"),
        env.B.ep.call("connected"),
        env.server.ep.call("peers"),
      ])
      return a && b && peers.includes("peer-a") && peers.includes("peer-b")
    },
    deadline,
    "peers to connect to the sync server",
  )
  return env
}

async function teardown(env) {
  if (!env) return
  env.closing = shuttingDown = true
  const call = (r, m) => (env.failed ? Promise.resolve() : r.ep.call(m))
  await Promise.allSettled(env.roles.map(r => call(r, "quiet"))) // no disconnect logs from here on
  // Clients first (clean WebSocket close), then the server.
  await Promise.allSettled([call(env.A, "shutdown"), call(env.B, "shutdown")])
  await Promise.allSettled([call(env.server, "shutdown")])
  for (const s of env.proxy?.sockets ?? []) s.destroy()
  if (env.proxy) await new Promise(r => env.proxy.server.close(() => r()))
  if (env.split) {
    await Promise.all(
      env.roles.map(
        ({ child }) =>
          new Promise(resolve => {
            if (child.exitCode !== null || child.signalCode !== null) return resolve()
            child.once("exit", resolve)
            if (child.connected) child.send({ t: "call", id: 0, method: "exit", args: {} })
            setTimeout(() => child.kill("SIGKILL"), 5_000).unref()
          }),
      ),
    )
  }
}

// ----------------------------------------------------------- measurement

async function startMeasure(env) {
  // Each repo process notes its own CPU counter; then the window starts here.
  if (env.split) await Promise.all(env.roles.map(r => r.ep.call("mark")))
  env.measure = {
    t0: performance.now(),
    cpu0: process.cpuUsage(),
    bytes0: env.proxy.bytes,
  }
  return env.measure
}

async function endMeasure(env, m) {
  const seconds = (performance.now() - m.t0) / 1000
  const bytes = env.proxy.bytes - m.bytes0
  const ownCpu = cpuSeconds(process.cpuUsage(m.cpu0))
  const ownRss = process.resourceUsage().maxRSS / 1024
  const r = { seconds: round3(seconds), wire_bytes: bytes }
  if (!env.split) {
    r.cpu_seconds = round3(ownCpu)
    r.peak_rss_mib = round3(ownRss)
    return r
  }
  // Sum over the three repo processes. A process that does not answer within
  // 30 s (event loop blocked) counts as null.
  const reports = await Promise.all(
    env.roles.map(role =>
      Promise.race([role.ep.call("report").catch(() => null), sleep(30_000).then(() => null)]),
    ),
  )
  const sum = k => (reports.every(x => x) ? round3(reports.reduce((s, x) => s + x[k], 0)) : null)
  r.cpu_seconds = sum("cpu_seconds")
  r.peak_rss_mib = sum("peak_rss_mib")
  r.by_process = Object.fromEntries(
    env.roles.map((role, i) => [
      role.role,
      reports[i]
        ? { cpu_seconds: round3(reports[i].cpu_seconds), peak_rss_mib: round3(reports[i].peak_rss_mib) }
        : null,
    ]),
  )
  r.by_process.harness = { cpu_seconds: round3(ownCpu), peak_rss_mib: round3(ownRss) }
  return r
}

// -------------------------------------------------------------- workloads

/** Create an empty document on A, wait until the server has it, find it on B. */
async function shareEmptyDoc(env) {
  const url = await env.A.ep.call("createEmpty", { deadline: Date.now() + 30_000 })
  await env.B.ep.call("find", { url })
  await sleep(500) // let setup traffic and throttled saves settle
}

/** (a) one document, N single-key edits on A; done when B has A's heads. */
async function workloadA(env, o) {
  const N = o.edits
  await shareEmptyDoc(env)
  env.params = { edits: N, yield_every: o.yieldEvery }
  env.progress = async () => ({
    a_changes: await env.A.ep.call("changes"),
    b_changes: await env.B.ep.call("changes"),
  })

  const m = await startMeasure(env)
  const deadline = Date.now() + o.timeout * 1000
  const { heads, loopMs } = await env.A.ep.call("editLoop", { n: N, yieldEvery: o.yieldEvery })
  log(`workload a: ${N} changes on A took ${(loopMs / 1000).toFixed(3)} s`)
  await Promise.race([
    env.B.ep.call("waitHeads", { heads, key: `k${(N - 1) % 100}`, value: N - 1, deadline }),
    rejectAt(deadline + 1000, `B to receive all ${N} edits`),
  ])
  return { ...(await endMeasure(env, m)), converged: true }
}

/**
 * (b) D documents with keys k0..k9 created on A; done when B has them all.
 *
 * Documents go in batches of `--batch` (default 1000; 0 = all at once): A
 * creates a batch, its URLs are handed to B, B finds every URL of it, and the
 * next batch starts when B has the whole batch.
 */
async function workloadB(env, o) {
  const D = o.docs
  const batch = o.batch > 0 ? Math.min(o.batch, D) : D
  env.params = { docs: D, batch, yield_every: o.yieldEvery }
  let last = { done: 0, unavailableFirst: 0 }
  const poll = async () => {
    last = await Promise.race([env.B.ep.call("docsProgress"), sleep(5_000).then(() => last)])
    return last
  }
  env.progress = async () => ({ docs_on_b: (await poll()).done })
  await sleep(200)

  const m = await startMeasure(env)
  const deadline = Date.now() + o.timeout * 1000
  const elapsed = () => ((performance.now() - m.t0) / 1000).toFixed(1)
  let busy = false
  const progress = setInterval(async () => {
    if (busy) return
    busy = true
    const p = await poll()
    busy = false
    log(`workload b: ${p.done}/${D} on B after ${elapsed()} s`)
  }, 10_000)
  const watchdog = rejectAt(deadline, `all ${D} documents on B`)
  try {
    for (let first = 0; first < D; first += batch) {
      const lastJ = Math.min(D, first + batch)
      const urls = await Promise.race([
        env.A.ep.call("createDocs", { first, last: lastJ, yieldEvery: o.yieldEvery }),
        watchdog,
      ])
      // Rejects on the first timeout.
      await Promise.race([
        env.B.ep.call("fetchDocs", { urls, first, deadline, yieldEvery: o.yieldEvery }),
        watchdog,
      ])
    }
  } finally {
    clearInterval(progress)
    watchdog.cancel()
  }
  const r = await endMeasure(env, m)
  const p = await poll()
  if (p.unavailableFirst > 0)
    log(`workload b: ${p.unavailableFirst}/${D} finds on B were first answered "unavailable"`)
  return { ...r, converged: true }
}

/**
 * (c) A and B each write `rate` edits/s for `seconds` into one shared
 * document (A writes a{n}, B writes b{n}). Latency is from just before the
 * writer's handle.change() to the other side's "change" event whose patches
 * first contain that key, both taken on the shared wall clock
 * (performance.timeOrigin + performance.now()).
 */
async function workloadC(env, o) {
  await shareEmptyDoc(env)
  const perPeer = Math.floor(o.seconds * o.rate)
  await env.B.ep.call("watch", { prefix: "a", expect: perPeer })
  await env.A.ep.call("watch", { prefix: "b", expect: perPeer })
  env.params = { seconds: o.seconds, rate_per_peer: o.rate, edits_per_peer: perPeer }
  const states = async () => Promise.all([env.A.ep.call("cstate"), env.B.ep.call("cstate")])
  env.progress = async () => {
    const [a, b] = await states()
    return { sent_a: a.sent, sent_b: b.sent, seen_a_on_b: b.seen, seen_b_on_a: a.seen }
  }

  const m = await startMeasure(env)
  const deadline = Date.now() + (o.seconds + o.timeout) * 1000
  await Promise.all([
    env.A.ep.call("write", { prefix: "a", seconds: o.seconds, rate: o.rate }),
    env.B.ep.call("write", { prefix: "b", seconds: o.seconds, rate: o.rate }),
  ])
  const writeSeconds = (performance.now() - m.t0) / 1000

  // convergence: everything seen on the other side and equal heads
  let sa, sb
  try {
    await pollUntil(
      async () => {
        ;[sa, sb] = await states()
        return sa.seen === perPeer && sb.seen === perPeer && sameHeads(sa.heads, sb.heads)
      },
      deadline,
      "convergence",
      10,
    )
  } catch (e) {
    if (sa) log(`workload c: sent a=${sa.sent} b=${sb.sent}, seen a on b=${sb.seen} b on a=${sa.seen}`)
    throw e
  }
  const r = await endMeasure(env, m)

  const [la, lb] = await Promise.all([env.A.ep.call("latencyData"), env.B.ep.call("latencyData")])
  const latencies = []
  // B saw A's keys, A saw B's keys
  for (const [sent, seen] of [
    [la.sentAt, lb.seenAt],
    [lb.sentAt, la.seenAt],
  ])
    for (let n = 0; n < perPeer; n++) if (seen[n] != null) latencies.push(seen[n] - sent[n])
  latencies.sort((x, y) => x - y)
  log(
    `workload c: writes took ${writeSeconds.toFixed(3)} s, ` +
      `convergence tail ${(r.seconds - writeSeconds).toFixed(3)} s, ` +
      `${latencies.length} latencies, max ${latencies.at(-1)?.toFixed(1)} ms`,
  )
  return {
    ...r,
    converged: true,
    p50_ms: round3(percentile(latencies, 50)),
    p99_ms: round3(percentile(latencies, 99)),
  }
}

// ------------------------------------------------------------------- main

async function main() {
  const tmp = fs.mkdtempSync(path.join(opts.tmpdir, "masq-bench-amrepo-"))
  let env
  for (const sig of ["SIGINT", "SIGTERM"]) {
    process.once(sig, () => {
      process.stderr.write(`bench.mjs: ${sig}, removing ${tmp}\n`)
      for (const r of env?.roles ?? []) r.child?.kill("SIGKILL")
      fs.rmSync(tmp, { recursive: true, force: true })
      process.exit(130)
    })
  }
  const split = opts.processes === 3
  let exitCode = 0
  const line = extra => ({
    system: "automerge-repo",
    workload: opts.workload,
    params: env?.params ?? {},
    processes: opts.processes,
    ...extra,
    versions: versions(),
  })
  try {
    env = await setup(tmp, split)
    const run = { a: workloadA, b: workloadB, c: workloadC }[opts.workload]
    const res = await run(env, opts)
    // Not part of the measured window: how long persisting everything takes
    // once converged (automerge-repo saves asynchronously, debounced 100 ms).
    const f0 = performance.now()
    await Promise.all(env.roles.map(r => r.ep.call("flush")))
    const flushMs = performance.now() - f0
    const out = line({
      seconds: res.seconds,
      cpu_seconds: res.cpu_seconds,
      peak_rss_mib: res.peak_rss_mib,
      wire_bytes: res.wire_bytes,
      converged: res.converged,
      p50_ms: res.p50_ms ?? null,
      p99_ms: res.p99_ms ?? null,
      flush_after_ms: round3(flushMs),
    })
    if (res.by_process) out.by_process = res.by_process
    process.stdout.write(JSON.stringify(out) + "\n")
  } catch (e) {
    exitCode = 1
    if (e instanceof TimeoutError) {
      process.stderr.write(`bench.mjs: NOT CONVERGED: ${e.message} (workload ${opts.workload})\n`)
      if (env?.measure) {
        // Still one JSON line, so the comparison table can show "did not finish".
        const r = await endMeasure(env, env.measure)
        let progress = null
        try {
          progress = await Promise.race([env.progress?.(), sleep(10_000).then(() => null)])
        } catch {}
        const out = line({
          seconds: r.seconds,
          cpu_seconds: r.cpu_seconds,
          peak_rss_mib: r.peak_rss_mib,
          wire_bytes: r.wire_bytes,
          converged: false,
          p50_ms: null,
          p99_ms: null,
          progress,
        })
        if (r.by_process) out.by_process = r.by_process
        process.stdout.write(JSON.stringify(out) + "\n")
      }
    } else process.stderr.write(`bench.mjs: error: ${e?.stack ?? e}\n`)
  }
  const t0 = performance.now()
  try {
    await Promise.race([teardown(env), sleep(15_000)])
  } catch (e) {
    process.stderr.write(`bench.mjs: teardown error: ${e?.stack ?? e}\n`)
  }
  for (const r of env?.roles ?? []) if (r.child && r.child.exitCode === null) r.child.kill("SIGKILL")
  fs.rmSync(tmp, { recursive: true, force: true })
  log(`teardown (shutdown + removing ${tmp}) took ${((performance.now() - t0) / 1000).toFixed(1)} s`)
  process.exit(exitCode)
}

// automerge-repo leaves some promises unhandled (e.g. DocHandle.whenReady()
// timing out after 60 s inside DocSynchronizer when the event loop is
// overloaded). Report the first few and a count; they do not end the run.
let unhandled = 0
process.on("unhandledRejection", e => {
  if (++unhandled <= 3)
    process.stderr.write(`[${tag}] unhandled rejection inside automerge-repo: ${e?.message ?? e}\n`)
})
process.on("uncaughtException", e => {
  if (shuttingDown) {
    process.stderr.write(`[${tag}] ignored during shutdown: ${e?.message ?? e}\n`)
    return
  }
  process.stderr.write(`[${tag}] uncaught exception: ${e?.stack ?? e}\n`)
  process.exit(1)
})
process.on("exit", () => {
  if (unhandled > 3) process.stderr.write(`[${tag}] ${unhandled} unhandled rejections in total\n`)
})

if (opts.role) await childMain()
else await main()

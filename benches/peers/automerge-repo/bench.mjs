#!/usr/bin/env node
// automerge-repo side of the masq M9 side-by-side benchmark.
//
//   node bench.mjs --workload a|b|c [--edits N] [--docs N] [--seconds N]
//                  [--rate N] [--timeout S] [--yield-every N] [--batch N]
//                  [--tmpdir DIR]
//
// Runs ONE workload and prints ONE JSON line on stdout. Diagnostics go to
// stderr. See README.md for what is measured and how.

import fs from "node:fs"
import net from "node:net"
import os from "node:os"
import path from "node:path"
import { performance } from "node:perf_hooks"
import { createRequire } from "node:module"

import { Repo } from "@automerge/automerge-repo"
import {
  WebSocketClientAdapter,
  WebSocketServerAdapter,
} from "@automerge/automerge-repo-network-websocket"
import { NodeFSStorageAdapter } from "@automerge/automerge-repo-storage-nodefs"
import { WebSocketServer } from "ws"

// ---------------------------------------------------------------- arguments

function usage(msg) {
  if (msg) process.stderr.write(`bench.mjs: ${msg}\n`)
  process.stderr.write(
    "usage: node bench.mjs --workload a|b|c [--edits N] [--docs N] " +
      "[--seconds N] [--rate N] [--timeout S] [--yield-every N] [--batch N] [--tmpdir DIR]\n",
  )
  process.exit(2)
}

function parseArgs(argv) {
  const opts = {
    workload: null,
    edits: 100_000,
    docs: 10_000,
    seconds: 60,
    rate: 100,
    timeout: 300,
    yieldEvery: 0,
    batch: 1000,
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
  }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === "-h" || a === "--help") usage()
    if (a === "--workload") {
      opts.workload = argv[++i]
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
  if (!["a", "b", "c"].includes(opts.workload)) usage("--workload a|b|c is required")
  if (opts.workload === "a" && !(Number.isInteger(opts.edits) && opts.edits >= 1))
    usage("--edits must be a positive integer")
  if (opts.workload === "b" && !(Number.isInteger(opts.docs) && opts.docs >= 1))
    usage("--docs must be a positive integer")
  if (opts.workload === "c" && !(opts.seconds > 0 && opts.rate > 0))
    usage("--seconds and --rate must be > 0")
  return opts
}

const opts = parseArgs(process.argv.slice(2))
const log = (...args) => process.stderr.write(`[amrepo-bench] ${args.join(" ")}\n`)

// ------------------------------------------------------------------ helpers

const sleep = ms => new Promise(r => setTimeout(r, ms))
const yieldToLoop = () => new Promise(r => setImmediate(r))

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

/** Resolve when poll() is true, polling every `everyMs`. */
async function pollUntil(poll, deadlineMs, what, everyMs = 10) {
  while (!poll()) {
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

async function setup(tmp) {
  // Sync server, configured like automerge-repo's sync-server: a Repo with a
  // WebSocketServerAdapter, NodeFS storage and a share policy that never
  // announces documents (it only serves documents peers ask for).
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 })
  await new Promise((resolve, reject) => {
    wss.once("listening", resolve)
    wss.once("error", reject)
  })
  const serverPort = wss.address().port
  const server = new Repo({
    network: [new WebSocketServerAdapter(wss)],
    storage: new NodeFSStorageAdapter(path.join(tmp, "server")),
    peerId: "storage-server-bench",
    sharePolicy: async () => false,
  })

  const proxy = await startProxy(serverPort)
  const url = `ws://127.0.0.1:${proxy.port}`

  // Two peers with default (generous) share policy and their own NodeFS storage.
  const mkPeer = name =>
    new Repo({
      network: [new WebSocketClientAdapter(url)],
      storage: new NodeFSStorageAdapter(path.join(tmp, name)),
      peerId: `peer-${name}`,
    })
  const A = mkPeer("a")
  const B = mkPeer("b")

  const deadline = Date.now() + 30_000
  await pollUntil(
    () =>
      A.peers.includes("storage-server-bench") &&
      B.peers.includes("storage-server-bench") &&
      server.peers.includes("peer-a") &&
      server.peers.includes("peer-b"),
    deadline,
    "peers to connect to the sync server",
  )
  return { wss, server, proxy, A, B }
}

async function teardown(env) {
  if (env) {
    // Clients first (clean WebSocket close), then the server.
    await Promise.allSettled([env.A.shutdown(), env.B.shutdown()])
    await Promise.allSettled([env.server.shutdown()])
    await new Promise(r => env.wss.close(() => r()))
    for (const s of env.proxy.sockets) s.destroy()
    await new Promise(r => env.proxy.server.close(() => r()))
  }
}

/**
 * Setup for (a) and (c): create an empty document on A, wait until the sync
 * server has it (A's sync state with the server reports A's heads), then find
 * it on B.
 *
 * Waiting matters: if B asks before the server has the document, the server
 * answers "unavailable", and because the document is empty its arrival on the
 * server emits no "change" event, so the server never pushes it to B (B's
 * handle would sit in "requesting" until its 60 s timeout).
 */
async function shareEmptyDoc(env, deadlineMs) {
  const { A, B } = env
  const hA = A.create()
  await pollUntil(
    () => {
      const sid = A.getStorageIdOfPeer("storage-server-bench")
      return sid && sameHeads(hA.getSyncInfo(sid)?.lastHeads, hA.heads())
    },
    deadlineMs,
    "the sync server to store the new document",
  )
  const hB = await B.find(hA.url)
  return { hA, hB }
}

// ----------------------------------------------------------- measurement

function startMeasure(env) {
  // Kept on env so that a timeout can still report the measured window.
  env.measure = {
    t0: performance.now(),
    cpu0: process.cpuUsage(),
    bytes0: env.proxy.bytes,
  }
  return env.measure
}

function endMeasure(env, m) {
  const seconds = (performance.now() - m.t0) / 1000
  const cpu = process.cpuUsage(m.cpu0)
  return {
    seconds: round3(seconds),
    cpu_seconds: round3((cpu.user + cpu.system) / 1e6),
    peak_rss_mib: round3(process.resourceUsage().maxRSS / 1024),
    wire_bytes: env.proxy.bytes - m.bytes0,
  }
}

// -------------------------------------------------------------- workloads

/** (a) one document, N single-key edits on A; done when B has A's heads. */
async function workloadA(env, o) {
  const N = o.edits
  const { hA, hB } = await shareEmptyDoc(env, Date.now() + 30_000)
  await sleep(500) // let setup traffic and throttled saves settle

  const m = startMeasure(env)
  const deadline = Date.now() + o.timeout * 1000
  for (let i = 0; i < N; i++) {
    hA.change(d => {
      d[`k${i % 100}`] = i
    })
    if (o.yieldEvery > 0 && (i + 1) % o.yieldEvery === 0) await yieldToLoop()
  }
  log(`workload a: ${N} changes on A took ${((performance.now() - m.t0) / 1000).toFixed(3)} s`)
  const lastKey = `k${(N - 1) % 100}`
  const headsA = hA.heads()
  env.params = { edits: N, yield_every: o.yieldEvery }
  env.progress = () => ({ b_changes: hB.metrics().numChanges, a_changes: hA.metrics().numChanges })
  await waitFor(
    hB,
    "heads-changed",
    () => hB.doc()[lastKey] === N - 1 && sameHeads(hB.heads(), headsA),
    deadline,
    `B to receive all ${N} edits`,
  )
  const r = endMeasure(env, m)
  return { params: { edits: N, yield_every: o.yieldEvery }, ...r, converged: true }
}

/**
 * (b) D documents with keys k0..k9 created on A; done when B has them all.
 *
 * Documents go in batches of `--batch` (default 1000; 0 = all at once): A
 * creates a batch, B finds every URL of it, and the next batch starts when B
 * has the whole batch. Creating 10 000 documents in one burst overloads
 * automerge-repo 2.5.6 (see README): its 60 s internal timeouts fire and some
 * documents never arrive.
 */
async function workloadB(env, o) {
  const { A, B } = env
  const D = o.docs
  const batch = o.batch > 0 ? Math.min(o.batch, D) : D
  await sleep(200)

  const m = startMeasure(env)
  const deadline = Date.now() + o.timeout * 1000
  const elapsed = () => ((performance.now() - m.t0) / 1000).toFixed(1)
  let unavailableFirst = 0
  let nDone = 0
  env.params = { docs: D, batch, yield_every: o.yieldEvery }
  env.progress = () => ({ docs_on_b: nDone })
  const complete = (h, j) => {
    if (!h.isReady()) return false
    const d = h.doc()
    for (let k = 0; k < 10; k++) if (d[`k${k}`] !== j * 10 + k) return false
    return true
  }
  // B gets document j (URL handed over out of band, in-process).
  const fetchOnB = async (url, j) => {
    const h = await B.find(url, { allowableStates: ["ready", "unavailable"] })
    if (h.isReady()) {
      await waitFor(h, "heads-changed", () => complete(h, j), deadline, `document ${j} on B`)
    } else {
      // The server did not have it yet and said so; it pushes the document
      // when A's copy arrives. The handle turns "ready" only after its
      // "heads-changed" event, so poll as well.
      unavailableFirst++
      await waitFor(h, "heads-changed", () => complete(h, j), deadline, `document ${j} on B`, 20)
    }
    nDone++
  }
  const progress = setInterval(() => log(`workload b: ${nDone}/${D} on B after ${elapsed()} s`), 10_000)
  const watchdog = rejectAt(deadline, `all ${D} documents on B`)
  try {
    for (let first = 0; first < D; first += batch) {
      const last = Math.min(D, first + batch)
      const urls = []
      for (let j = first; j < last; j++) {
        const init = {}
        for (let k = 0; k < 10; k++) init[`k${k}`] = j * 10 + k
        urls.push(A.create(init).url)
        if (o.yieldEvery > 0 && (j + 1) % o.yieldEvery === 0) await yieldToLoop()
      }
      // Rejects on the first timeout.
      await Promise.race([Promise.all(urls.map((url, i) => fetchOnB(url, first + i))), watchdog])
    }
  } finally {
    clearInterval(progress)
    watchdog.cancel()
  }
  const r = endMeasure(env, m)
  if (unavailableFirst > 0)
    log(`workload b: ${unavailableFirst}/${D} finds on B were first answered "unavailable"`)
  return { params: { docs: D, batch, yield_every: o.yieldEvery }, ...r, converged: true }
}

/**
 * (c) A and B each write `rate` edits/s for `seconds` into one shared
 * document (A writes a{n}, B writes b{n}, value Date.now()). Latency is from
 * just before the local handle.change() to the other side's "change" event
 * whose patches contain that key.
 */
async function workloadC(env, o) {
  const { hA, hB } = await shareEmptyDoc(env, Date.now() + 30_000)
  await sleep(500)

  const perPeer = Math.floor(o.seconds * o.rate) // edits each side makes
  const sent = { a: new Float64Array(perPeer), b: new Float64Array(perPeer) }
  const seen = { a: new Uint8Array(perPeer), b: new Uint8Array(perPeer) }
  const nSent = { a: 0, b: 0 }
  const nSeen = { a: 0, b: 0 }
  const latencies = []

  // receiver: B watches A's keys ("a"), A watches B's keys ("b")
  const watch = (handle, prefix) => {
    handle.on("change", ({ patches }) => {
      const now = performance.now()
      for (const p of patches) {
        if (p.action !== "put" || p.path.length !== 1) continue
        const key = p.path[0]
        if (typeof key !== "string" || key[0] !== prefix) continue
        const n = Number(key.slice(1))
        if (!(n >= 0 && n < nSent[prefix]) || seen[prefix][n]) continue
        seen[prefix][n] = 1
        nSeen[prefix]++
        latencies.push(now - sent[prefix][n])
      }
    })
  }
  watch(hB, "a")
  watch(hA, "b")

  const m = startMeasure(env)
  const deadline = Date.now() + (o.seconds + o.timeout) * 1000
  env.params = { seconds: o.seconds, rate_per_peer: o.rate, edits_per_peer: perPeer }
  env.progress = () => ({ sent_a: nSent.a, sent_b: nSent.b, seen_a_on_b: nSeen.a, seen_b_on_a: nSeen.b })
  const write = (handle, prefix) => {
    const n = nSent[prefix]
    sent[prefix][n] = performance.now()
    nSent[prefix] = n + 1
    handle.change(d => {
      d[`${prefix}${n}`] = Date.now()
    })
  }
  // A 5 ms ticker; each tick each side catches up to floor(elapsed * rate)
  // edits, so the rate holds even if a tick is late.
  await new Promise(resolve => {
    const tick = () => {
      const elapsed = (performance.now() - m.t0) / 1000
      const target = Math.min(perPeer, Math.floor(elapsed * o.rate) + 1)
      while (nSent.a < target || nSent.b < target) {
        if (nSent.a < target) write(hA, "a")
        if (nSent.b < target) write(hB, "b")
      }
      if (nSent.a >= perPeer && nSent.b >= perPeer && elapsed >= o.seconds) {
        clearInterval(timer)
        resolve()
      }
    }
    const timer = setInterval(tick, 5)
    tick()
  })
  const writeSeconds = (performance.now() - m.t0) / 1000

  // convergence: everything seen on the other side and equal heads
  const converged = () =>
    nSeen.a === perPeer && nSeen.b === perPeer && sameHeads(hA.heads(), hB.heads())
  try {
    await Promise.race([
      // "change" fires after "heads-changed", and after watch() counted the keys
      waitFor(hA, "change", converged, deadline, "convergence (A)", 100),
      waitFor(hB, "change", converged, deadline, "convergence (B)", 100),
    ])
  } catch (e) {
    log(
      `workload c: sent a=${nSent.a} b=${nSent.b}, seen a=${nSeen.a} b=${nSeen.b}, ` +
        `heads A=${hA.heads()} B=${hB.heads()}`,
    )
    throw e
  }
  const r = endMeasure(env, m)
  latencies.sort((x, y) => x - y)
  log(
    `workload c: writes took ${writeSeconds.toFixed(3)} s, ` +
      `convergence tail ${(r.seconds - writeSeconds).toFixed(3)} s, ` +
      `${latencies.length} latencies, max ${latencies.at(-1)?.toFixed(1)} ms`,
  )
  return {
    params: { seconds: o.seconds, rate_per_peer: o.rate, edits_per_peer: perPeer },
    ...r,
    converged: true,
    p50_ms: round3(percentile(latencies, 50)),
    p99_ms: round3(percentile(latencies, 99)),
  }
}

// ------------------------------------------------------------------- main

async function main() {
  const tmp = fs.mkdtempSync(path.join(opts.tmpdir, "masq-bench-amrepo-"))
  for (const sig of ["SIGINT", "SIGTERM"]) {
    process.once(sig, () => {
      process.stderr.write(`bench.mjs: ${sig}, removing ${tmp}\n`)
      fs.rmSync(tmp, { recursive: true, force: true })
      process.exit(130)
    })
  }
  let env
  let exitCode = 0
  try {
    env = await setup(tmp)
    const run = { a: workloadA, b: workloadB, c: workloadC }[opts.workload]
    const res = await run(env, opts)
    // Not part of the measured window: how long persisting everything takes
    // once converged (automerge-repo saves asynchronously, debounced 100 ms).
    const f0 = performance.now()
    await Promise.all([env.A.flush(), env.B.flush(), env.server.flush()])
    const flushMs = performance.now() - f0
    const line = {
      system: "automerge-repo",
      workload: opts.workload,
      params: res.params,
      seconds: res.seconds,
      cpu_seconds: res.cpu_seconds,
      peak_rss_mib: res.peak_rss_mib,
      wire_bytes: res.wire_bytes,
      converged: res.converged,
      p50_ms: res.p50_ms ?? null,
      p99_ms: res.p99_ms ?? null,
      flush_after_ms: round3(flushMs),
      versions: versions(),
    }
    process.stdout.write(JSON.stringify(line) + "\n")
  } catch (e) {
    exitCode = 1
    if (e instanceof TimeoutError) {
      process.stderr.write(`bench.mjs: NOT CONVERGED: ${e.message} (workload ${opts.workload})\n`)
      if (env?.measure) {
        // Still one JSON line, so the comparison table can show "did not finish".
        const r = endMeasure(env, env.measure)
        const line = {
          system: "automerge-repo",
          workload: opts.workload,
          params: env.params ?? {},
          seconds: r.seconds,
          cpu_seconds: r.cpu_seconds,
          peak_rss_mib: r.peak_rss_mib,
          wire_bytes: r.wire_bytes,
          converged: false,
          p50_ms: null,
          p99_ms: null,
          progress: env.progress?.() ?? null,
          versions: versions(),
        }
        process.stdout.write(JSON.stringify(line) + "\n")
      }
    } else process.stderr.write(`bench.mjs: error: ${e?.stack ?? e}\n`)
  }
  const t0 = performance.now()
  try {
    await Promise.race([teardown(env), sleep(10_000)])
  } catch (e) {
    process.stderr.write(`bench.mjs: teardown error: ${e?.stack ?? e}\n`)
  }
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
    process.stderr.write(`bench.mjs: unhandled rejection inside automerge-repo: ${e?.message ?? e}\n`)
})
process.on("exit", () => {
  if (unhandled > 3) process.stderr.write(`bench.mjs: ${unhandled} unhandled rejections in total\n`)
})

await main()

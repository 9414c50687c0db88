// Prints the comparison table from target/peers/*.json (see ./run).
import { readFileSync, existsSync } from "node:fs";
import { join } from "node:path";

const dir = process.argv[2];
const load = (system, w) => {
  const f = join(dir, `${system}-${w}.json`);
  if (!existsSync(f)) return null;
  const lines = readFileSync(f, "utf8").trim().split("\n");
  try {
    return JSON.parse(lines[lines.length - 1]);
  } catch {
    return null;
  }
};
const names = { a: "a: 1 doc, 100k edits", b: "b: 10k docs x 10 keys", c: "c: 2x100 edits/s, 60 s" };
const fields = [
  ["seconds", "time s", 2],
  ["cpu_seconds", "CPU s", 2],
  ["peak_rss_mib", "peak RSS MiB", 1],
  ["wire_bytes", "wire MB", 2, 1e6],
  ["p50_ms", "p50 ms", 2],
  ["p99_ms", "p99 ms", 2],
];
const fmt = (v, d, div = 1) => (v === null || v === undefined ? "—" : (v / div).toFixed(d));
console.log("| workload | measure | automerge-repo | masq | masq / automerge-repo |");
console.log("|---|---|---|---|---|");
for (const w of ["a", "b", "c"]) {
  const ar = load("automerge-repo", w);
  const m = load("masq", w);
  for (const [k, label, d, div] of fields) {
    const x = ar && ar.converged ? ar[k] : null;
    const y = m && m.converged ? m[k] : null;
    if ((x === null || x === undefined) && (y === null || y === undefined)) continue;
    const ratio = typeof x === "number" && typeof y === "number" && x > 0 ? (y / x).toFixed(2) : "—";
    console.log(`| ${names[w]} | ${label} | ${ar && !ar.converged ? "did not converge" : fmt(x, d, div)} | ${m && !m.converged ? "did not converge" : fmt(y, d, div)} | ${ratio} |`);
  }
}

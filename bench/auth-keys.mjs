// Micro-benchmark: the cost of authenticating one request with 2 keys vs 10,000 keys in the index
// (the key database's in-memory index). Run: npm run build && node bench/auth-keys.mjs
// Interleaved rounds, medians; prints ns per verify for a hit and a miss.
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import { KeyIndex, digestKey, envIdentity } from '../dist/keys/key-index.js';

const ROUNDS = 7;
const CALLS = 200_000;

function indexWith(n) {
  const keys = Array.from({ length: n }, () => `sk-${randomBytes(24).toString('base64url')}`);
  const index = new KeyIndex();
  index.replace(keys.map((k, i) => ({ digest: digestKey(k), identity: envIdentity(i + 1) })));
  return { index, keys };
}

function measure(index, presented) {
  let found = 0;
  const start = process.hrtime.bigint();
  for (let i = 0; i < CALLS; i++) if (index.verify(presented[i & 1023]) !== undefined) found++;
  const ns = Number(process.hrtime.bigint() - start) / CALLS;
  return { ns, found };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const sizes = [2, 10_000];
const sets = sizes.map((n) => {
  const { index, keys } = indexWith(n);
  return {
    n,
    index,
    hits: Array.from({ length: 1024 }, (_, i) => keys[i % keys.length]),
    misses: Array.from({ length: 1024 }, () => `sk-${randomBytes(24).toString('base64url')}`),
  };
});
const results = new Map(sizes.map((n) => [n, { hit: [], miss: [] }]));
for (let r = 0; r < ROUNDS; r++) {
  for (const s of sets) {
    results.get(s.n).hit.push(measure(s.index, s.hits).ns);
    results.get(s.n).miss.push(measure(s.index, s.misses).ns);
  }
}
console.log(
  `auth cost per request (KeyIndex.verify: sha256 + Map lookup + timingSafeEqual); ${os.cpus()[0]?.model}, ${os.cpus().length} cores, Node ${process.version}`,
);
console.log(`| keys | valid key, ns (median of ${ROUNDS}) | unknown key, ns |`);
console.log('|---:|---:|---:|');
for (const n of sizes) console.log(`| ${n} | ${median(results.get(n).hit).toFixed(0)} | ${median(results.get(n).miss).toFixed(0)} |`);
const ratio = median(results.get(10_000).hit) / median(results.get(2).hit);
console.log(`\n10,000 keys / 2 keys, valid key: ${ratio.toFixed(2)}×`);

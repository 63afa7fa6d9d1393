#!/usr/bin/env node
// First-run set-up: creates .env from .env.example with a freshly generated client key and shows
// that key once. An existing .env is left alone (and no key is printed).
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const example = fileURLToPath(new URL('../.env.example', import.meta.url));
const target = '.env';

if (existsSync(target)) {
  console.log('✅ .env already exists; leaving it as it is. Keys are in LLM_API_KEYS there.');
  process.exit(0);
}
const key = `sk-${randomBytes(24).toString('base64url')}`; // 192 bits
const text = readFileSync(example, 'utf8').replace(/^LLM_API_KEYS=.*$/m, `LLM_API_KEYS=${key}`);
writeFileSync(target, text, { mode: 0o600 });
chmodSync(target, 0o600);
console.log('✅ Created .env with one client key. It is shown only now; copy it somewhere safe:');
console.log('');
console.log(`    ${key}`);
console.log('');
console.log('Add more keys comma-separated in LLM_API_KEYS; set LLM_UPSTREAM if llama-server is not on 127.0.0.1:5857.');

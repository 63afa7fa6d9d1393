// Builds the admin console (console/) into dist/console: the TypeScript modules with tsc, then the
// page, the stylesheet, the icon and uPlot (its minified classic script and CSS) copied beside
// them. Built in a temporary folder and moved into place, so a gateway or a test reading
// dist/console never sees half a console. Prints the size of what a browser loads.
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, 'dist', 'console');
const tmp = join(root, 'dist', `.console-${process.pid}`);
const require = createRequire(import.meta.url);
const tsc = require.resolve('typescript/bin/tsc');
const uplot = join(dirname(require.resolve('uplot/package.json')), 'dist');

rmSync(tmp, { recursive: true, force: true });
mkdirSync(join(tmp, 'assets', 'vendor'), { recursive: true });
execFileSync(process.execPath, [tsc, '-p', join(root, 'console', 'tsconfig.json'), '--outDir', join(tmp, 'assets')], { stdio: 'inherit' });
copyFileSync(join(root, 'console', 'index.html'), join(tmp, 'index.html'));
copyFileSync(join(root, 'console', 'console.css'), join(tmp, 'assets', 'console.css'));
copyFileSync(join(root, 'console', 'icon.svg'), join(tmp, 'assets', 'icon.svg'));
copyFileSync(join(uplot, 'uPlot.iife.min.js'), join(tmp, 'assets', 'vendor', 'uPlot.iife.min.js'));
copyFileSync(join(uplot, 'uPlot.min.css'), join(tmp, 'assets', 'vendor', 'uPlot.min.css'));

// Two builds at once (two test files finding the console stale) each move their own folder in;
// the last one wins.
for (let attempt = 0; ; attempt++) {
  rmSync(out, { recursive: true, force: true });
  try {
    renameSync(tmp, out);
    break;
  } catch (err) {
    if (attempt >= 5 || !['ENOTEMPTY', 'EEXIST'].includes(err.code)) throw err;
  }
}

let bytes = 0;
let gzipped = 0;
for (const entry of readdirSync(out, { recursive: true, encoding: 'utf8' })) {
  const path = join(out, entry);
  if (!statSync(path).isFile()) continue;
  bytes += statSync(path).size;
  gzipped += gzipSync(readFileSync(path), { level: 9 }).length;
}
console.log(`admin console: dist/console, ${(bytes / 1024).toFixed(1)} KB (${(gzipped / 1024).toFixed(1)} KB gzipped)`);

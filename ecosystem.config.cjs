// The same stack as `llm-gateway menu`, for PM2 without the menu — and for a start at boot:
//
//   npm run build
//   npx pm2 start ecosystem.config.cjs     # llama-server(s), gateway, tunnel, as in pm2-config.json
//   npx pm2 save                           # remember them
//   npx pm2 startup                        # prints the one command that starts PM2 (and them) at boot
//
// Everything comes from pm2-config.json next to this file (or the file named by
// LLM_GATEWAY_PM2_CONFIG), through the code the menu uses (dist/cli/stack/pm2-apps.js and
// pm2-config.js): the gateway gets wait_ready (it calls process.send('ready') once it listens) and
// a kill_timeout longer than GATEWAY_SHUTDOWN_GRACE_MS; processes with "enabled": false are left out;
// a "llama" list gives one app per llama-server (llama-1, llama-2 … or llama-<name>); a gateway with
// "instances": N ≥ 2 is one app of N processes in PM2 cluster mode, sharing GATEWAY_PORT (refused
// without GATEWAY_REDIS_URL: README, Running several gateways).
'use strict';

const path = require('node:path');

const configFile = process.env.LLM_GATEWAY_PM2_CONFIG || path.join(__dirname, 'pm2-config.json');

let pm2Apps;
let stackFile;
try {
  // dist/ is ES modules; Node.js ≥ 20.19 loads them with require().
  pm2Apps = require('./dist/cli/stack/pm2-apps.js');
  stackFile = require('./dist/cli/stack/pm2-config.js');
} catch (err) {
  if (err && err.code === 'MODULE_NOT_FOUND') throw new Error('ecosystem.config.cjs: dist/ is missing; run `npm run build` first');
  if (err && err.code === 'ERR_REQUIRE_ESM')
    throw new Error(`ecosystem.config.cjs needs Node.js ≥ 20.19 (this is ${process.version}); or use \`npx llm-gateway menu\``);
  throw err;
}

let apps;
try {
  apps = pm2Apps.ecosystemApps(configFile, process.env);
} catch (err) {
  if (err instanceof stackFile.StackConfigError) {
    throw new Error(`ecosystem.config.cjs: ${err.file}:\n  - ${err.problems.join('\n  - ')}`);
  }
  throw err;
}

module.exports = { apps };

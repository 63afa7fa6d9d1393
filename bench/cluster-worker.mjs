// The stand-in for PM2 cluster mode in bench/cluster.mjs: a primary that forks CLUSTER_WORKERS
// workers of CLUSTER_EXEC (dist/server.js) through Node's cluster module, so they share
// GATEWAY_PORT (the primary accepts and hands connections round-robin, as under PM2). SIGTERM
// stops the workers and then the primary.
import cluster from 'node:cluster';

const workers = Number(process.env.CLUSTER_WORKERS ?? '2');
cluster.setupPrimary({ exec: process.env.CLUSTER_EXEC, stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
for (let i = 0; i < workers; i++) cluster.fork({ NODE_APP_INSTANCE: String(i) });
process.on('SIGTERM', () => {
  for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGTERM');
  cluster.disconnect(() => process.exit(0));
});

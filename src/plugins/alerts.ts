// Alerts (issue #15): decorates app.alerts, which budgets and the key watch call to tell the
// operator's webhook something happened. Without GATEWAY_WEBHOOK_URL it is NO_ALERTS (emit does
// nothing) and nothing else is built: no agent, no timer, no registry listener.
//
// Registered before usage and auth, so it closes after them (app.ts): an alert emitted while the
// usage recorder's last flush settles budgets still gets its shutdown try.
import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import type { Config } from '../config.js';
import { NO_ALERTS, type Alerts } from '../alerts/events.js';
import { KeyWatch } from '../alerts/key-watch.js';
import { WebhookSender, type WebhookTuning } from '../alerts/webhook.js';
import type { KeyRegistry } from '../keys/key-registry.js';

declare module 'fastify' {
  interface FastifyInstance {
    /** Where alert events go: the webhook sender, or NO_ALERTS when no webhook is set. */
    alerts: Alerts;
    /** The webhook sender itself (its counts for /metrics), null when off. */
    webhook: WebhookSender | null;
  }
}

export default fp(
  async function alertsPlugin(
    app: FastifyInstance,
    opts: { config: Config; registry: KeyRegistry; tuning?: Partial<WebhookTuning> | undefined },
  ) {
    const { config, registry } = opts;
    if (config.webhookUrl === '') {
      app.decorate('alerts', NO_ALERTS);
      app.decorate('webhook', null);
      return;
    }
    const log = app.log.child({ component: 'alerts' });
    const sender = new WebhookSender(config.webhookUrl, config.webhookSecret, log, opts.tuning);
    app.decorate('alerts', sender);
    app.decorate('webhook', sender);
    const watch = new KeyWatch(registry, sender);
    watch.start();
    // The host only: a webhook URL's path or query often carries the receiver's token.
    log.info({ host: new URL(config.webhookUrl).host }, 'alerts: webhook on');
    app.addHook('onClose', async () => {
      watch.stop();
      await sender.close();
    });
  },
  { name: 'alerts', fastify: '5.x' },
);

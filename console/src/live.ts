// Live: llama-server's state, the fair queue and tokens per second, from GET /admin/live every few
// seconds; nothing is polled while the tab is hidden (visibilitychange), and a poll starts at once
// when it shows again.
import { api, type LiveJson } from './api.js';
import { h, replace, table } from './dom.js';
import { formatNumber, formatTime, t, type Key } from './i18n.js';

const POLL_MS = 3000;

const UP_STATES: Record<LiveJson['upstreams'][number]['state'], { label: Key; mark: string; cls: string }> = {
  unknown: { label: 'upUnknown', mark: '?', cls: 'warn' },
  ready: { label: 'upReady', mark: '✓', cls: 'ok' },
  loading: { label: 'upLoading', mark: '⟳', cls: 'warn' },
  down: { label: 'upDown', mark: '✕', cls: 'off' },
};

function stat(label: string, value: string, id: string): HTMLElement {
  return h('div', { class: 'stat' }, h('div', { class: 'stat-label' }, label), h('div', { class: 'stat-value', id }, value));
}

export function livePage(main: HTMLElement): () => void {
  let timer: number | undefined;
  let alive = true;
  /** a poll is waiting for its answer (so a tab shown again starts no second loop) */
  let polling = false;
  const status = h('p', { class: 'muted', id: 'live-status', 'aria-live': 'polite' }, t('loading'));
  const error = h('p', { class: 'error', role: 'alert' });
  const body = h('div', { id: 'live-body' });
  replace(main, h('h1', {}, t('liveTitle')), status, error, body);

  function draw(live: LiveJson): void {
    const q = live.queue;
    replace(
      body,
      h(
        'div',
        { class: 'stats' },
        stat(
          t('tokensPerSecond'),
          live.tokens_per_second === null ? t('usageOff') : formatNumber(live.tokens_per_second),
          'tokens-per-second',
        ),
        stat(
          t('requestsLastMinute'),
          live.requests_last_minute === null ? t('usageOff') : formatNumber(live.requests_last_minute),
          'requests-last-minute',
        ),
        stat(t('inFlight'), `${formatNumber(q.running)} / ${formatNumber(q.slots)}`, 'in-flight'),
        stat(t('waiting'), formatNumber(q.waiting), 'waiting'),
      ),
      h('h2', {}, t('upstreams')),
      h(
        'ul',
        { class: 'upstreams' },
        ...live.upstreams.map((u) => {
          const s = UP_STATES[u.state];
          return h(
            'li',
            { class: 'card upstream', 'data-state': u.state },
            h('div', { class: 'upstream-name' }, u.name, u.url === null ? null : h('span', { class: 'muted' }, ` ${u.url}`)),
            h('span', { class: `badge ${s.cls}` }, h('span', { 'aria-hidden': 'true' }, s.mark, ' '), t(s.label)),
            h(
              'dl',
              {},
              h('dt', {}, t('model')),
              h('dd', {}, u.models.length > 0 ? u.models.join(', ') : t('unknown')),
              h('dt', {}, t('slots')),
              h('dd', {}, slotsText(u.slots)),
            ),
          );
        }),
      ),
      h('h2', {}, t('perKeyNow')),
      h('p', { class: 'muted' }, t('queueLine', { running: q.running, slots: q.slots, waiting: q.waiting })),
      q.keys.length === 0
        ? h('p', { class: 'empty' }, t('noActivity'))
        : table(
            t('perKeyNow'),
            [t('key'), t('inFlight'), t('waiting'), t('requestsLastMinute'), t('tokens')],
            q.keys.map((k) => [
              k.name,
              k.running === null ? '—' : formatNumber(k.running),
              formatNumber(k.waiting),
              formatNumber(k.requests_last_minute),
              formatNumber(k.tokens_last_minute),
            ]),
            'numbers live-keys',
          ),
    );
  }

  function slotsText(s: { total: number | null; busy: number | null }): string {
    if (s.total === null) return t('unknown');
    return s.busy === null ? formatNumber(s.total) : t('slotsBusy', { busy: s.busy, total: s.total });
  }

  async function poll(): Promise<void> {
    timer = undefined;
    if (!alive || document.hidden || polling) return;
    polling = true;
    try {
      const live = await api<LiveJson>('GET', 'live');
      if (!alive) return;
      error.textContent = '';
      draw(live);
      status.textContent = t('updatedAt', { time: formatTime(live.at, true), seconds: POLL_MS / 1000 });
    } catch (err) {
      if (alive) error.textContent = err instanceof Error ? err.message : String(err);
    } finally {
      polling = false;
    }
    if (alive && !document.hidden) timer = window.setTimeout(() => void poll(), POLL_MS);
  }

  const onVisibility = (): void => {
    if (document.hidden) {
      window.clearTimeout(timer);
      timer = undefined;
      status.textContent = t('paused');
    } else if (timer === undefined) void poll();
  };
  document.addEventListener('visibilitychange', onVisibility);
  void poll();
  return () => {
    alive = false;
    window.clearTimeout(timer);
    document.removeEventListener('visibilitychange', onVisibility);
  };
}

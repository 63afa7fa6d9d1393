// Keys: the stored keys as a table with search (each key's limits, budget state and policy in
// words); create (the key shown once), edit every field (key-form.ts), disable/enable, rotate and
// revoke (both confirmed).
import { api, type KeyJson, type Limits, type UsageReport } from './api.js';
import { confirmDialog, showSecret } from './dialogs.js';
import { h, notice, replace, table } from './dom.js';
import { formatNumber, formatTime, t, type Key } from './i18n.js';
import { LIMIT_FIELDS, keyForm } from './key-form.js';
import { budgetCell, policyCell } from './key-rules.js';

function todayUtc(): string {
  return new Date().toISOString().slice(0, 10);
}

function stateOf(k: KeyJson, now: number): { label: Key; cls: string; mark: string } {
  if (k.expires_at !== null && Date.parse(k.expires_at) <= now) return { label: 'stateExpired', cls: 'expired', mark: '⚠' };
  return k.enabled ? { label: 'stateEnabled', cls: 'ok', mark: '●' } : { label: 'stateDisabled', cls: 'off', mark: '○' };
}

function limitsText(l: Limits): string {
  const parts = LIMIT_FIELDS.filter((f) => l[f.name] !== null).map((f) => `${f.name} ${formatNumber(l[f.name]!)}`);
  return parts.length === 0 ? t('defaultLimits') : parts.join(' · ');
}

export function keysPage(main: HTMLElement): () => void {
  let keys: KeyJson[] = [];
  let today = new Map<string, number>();
  let query = '';
  let alive = true;
  const search = h('input', {
    id: 'key-search',
    type: 'search',
    placeholder: t('searchPlaceholder'),
    autocomplete: 'off',
    oninput: (e: Event) => {
      query = (e.target as HTMLInputElement).value;
      draw();
    },
  });
  const count = h('p', { class: 'muted', 'aria-live': 'polite' });
  const body = h('div', {}, h('p', { class: 'muted' }, t('loading')));
  const error = h('p', { class: 'error', role: 'alert' });
  replace(
    main,
    h('h1', {}, t('navKeys')),
    h(
      'div',
      { class: 'toolbar' },
      h('label', { for: 'key-search' }, t('search')),
      search,
      h(
        'button',
        {
          type: 'button',
          class: 'primary',
          id: 'new-key-button',
          onclick: async () => {
            const saved = await keyForm(null);
            if (saved?.key !== undefined) await showSecret(saved.record.name, saved.key);
            await load();
          },
        },
        '+ ',
        t('newKey'),
      ),
    ),
    error,
    count,
    body,
  );

  async function load(): Promise<void> {
    try {
      const [list, usage] = await Promise.all([
        api<{ data: KeyJson[] }>('GET', 'keys'),
        api<UsageReport>('GET', `usage?by=key&since=${todayUtc()}`),
      ]);
      if (!alive) return;
      keys = list.data;
      today = new Map(usage.data.map((r) => [r.key ?? '', r.total_tokens]));
      error.textContent = '';
      draw();
    } catch (err) {
      if (alive) error.textContent = err instanceof Error ? err.message : String(err);
    }
  }

  async function act(k: KeyJson, what: 'toggle' | 'rotate' | 'revoke' | 'edit'): Promise<void> {
    try {
      if (what === 'edit') {
        const saved = await keyForm(k);
        if (saved !== null) notice(t('savedNotice', { name: saved.record.name }));
      } else if (what === 'toggle') {
        await api('PATCH', `keys/${encodeURIComponent(k.id)}`, { enabled: !k.enabled });
        notice(t(k.enabled ? 'disabledNotice' : 'enabledNotice', { name: k.name }));
      } else if (what === 'rotate') {
        if (!(await confirmDialog(t('rotateTitle', { name: k.name }), t('rotateText'), t('rotate')))) return;
        const rotated = await api<KeyJson & { key: string }>('POST', `keys/${encodeURIComponent(k.id)}/rotate`);
        await showSecret(k.name, rotated.key);
      } else {
        if (!(await confirmDialog(t('revokeTitle', { name: k.name }), t('revokeText'), t('revoke')))) return;
        await api('DELETE', `keys/${encodeURIComponent(k.id)}`);
        notice(t('revokedNotice', { name: k.name }));
      }
      await load();
    } catch (err) {
      error.textContent = err instanceof Error ? err.message : String(err);
    }
  }

  function draw(): void {
    const now = Date.now();
    const q = query.trim().toLowerCase();
    const shown = keys.filter(
      (k) => q === '' || [k.name, k.prefix, k.note, ...(k.models ?? []), ...(k.origins ?? [])].some((s) => s.toLowerCase().includes(q)),
    );
    count.textContent = t('keyCount', { shown: shown.length, total: keys.length });
    if (keys.length === 0) return replace(body, h('p', { class: 'empty' }, t('noKeys')));
    if (shown.length === 0) return replace(body, h('p', { class: 'empty' }, t('noMatch', { query })));
    const rows = shown.map((k) => {
      const s = stateOf(k, now);
      const button = (label: Key, what: 'toggle' | 'rotate' | 'revoke' | 'edit', cls = ''): HTMLElement =>
        h(
          'button',
          { type: 'button', class: cls, 'data-action': what, 'aria-label': `${t(label)} ${k.name}`, onclick: () => void act(k, what) },
          t(label),
        );
      return [
        h('span', { class: 'key-name', 'data-key': k.name }, k.name),
        h('code', {}, `${k.prefix}…`),
        h('span', { class: `badge ${s.cls}` }, h('span', { 'aria-hidden': 'true' }, s.mark, ' '), t(s.label)),
        k.expires_at === null ? t('never') : formatTime(k.expires_at),
        formatTime(k.last_used_at),
        formatNumber(today.get(k.name) ?? 0),
        limitsText(k.limits),
        budgetCell(k),
        policyCell(k.policy),
        k.models === null ? t('allModels') : k.models.join(', '),
        k.origins === null ? t('anyOrigin') : k.origins.join(', '),
        h('span', { class: 'note' }, k.note),
        h(
          'div',
          { class: 'row-actions' },
          button('edit', 'edit'),
          button(k.enabled ? 'disable' : 'enable', 'toggle'),
          button('rotate', 'rotate'),
          button('revoke', 'revoke', 'danger'),
        ),
      ];
    });
    replace(
      body,
      table(
        t('navKeys'),
        [
          t('name'),
          t('prefix'),
          t('state'),
          t('expires'),
          t('lastUsed'),
          t('tokensToday'),
          t('limits'),
          t('budget'),
          t('policy'),
          t('models'),
          t('origins'),
          t('note'),
          t('actions'),
        ],
        rows,
        'keys',
      ),
    );
  }

  void load();
  return () => {
    alive = false;
  };
}

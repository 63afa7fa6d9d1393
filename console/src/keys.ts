// Keys: the stored keys as a table with search; create (the key shown once), edit every field,
// disable/enable, rotate and revoke (both confirmed). Validation is the admin API's: its message is
// shown next to the form, and the field it names is marked.
import { ApiError, api, type KeyJson, type Limits, type UsageReport } from './api.js';
import { h, notice, replace, table } from './dom.js';
import { formatNumber, formatTime, t, type Key } from './i18n.js';

const LIMIT_FIELDS: readonly { name: keyof Limits; label: Key }[] = [
  { name: 'rpm', label: 'rpm' },
  { name: 'tpm', label: 'tpm' },
  { name: 'tpd', label: 'tpd' },
  { name: 'concurrency', label: 'concurrency' },
];

function todayUtc(): string {
  return new Date().toISOString().slice(0, 10);
}

/** A modal dialog (focus kept inside, Esc closes); removed from the page when it closes. */
function modal(labelledBy: string, ...children: (Node | null)[]): HTMLDialogElement {
  const dialog = h('dialog', { 'aria-labelledby': labelledBy }, ...children);
  dialog.addEventListener('close', () => dialog.remove());
  document.body.appendChild(dialog);
  dialog.showModal();
  return dialog;
}

/** Asks before doing something that cannot be undone; resolves true on confirmation. */
function confirmDialog(title: string, text: string, action: string): Promise<boolean> {
  return new Promise((resolve) => {
    let ok = false;
    const cancel = h('button', { type: 'button', onclick: () => dialog.close() }, t('cancel'));
    const dialog = modal(
      'confirm-title',
      h('h2', { id: 'confirm-title' }, title),
      h('p', {}, text),
      h(
        'div',
        { class: 'buttons' },
        cancel,
        h(
          'button',
          {
            type: 'button',
            class: 'danger',
            'data-confirm': 'yes',
            onclick: () => {
              ok = true;
              dialog.close();
            },
          },
          action,
        ),
      ),
    );
    dialog.addEventListener('close', () => resolve(ok));
    cancel.focus();
  });
}

/** The new key's secret, shown once, with a copy button. */
function showSecret(name: string, secret: string): Promise<void> {
  return new Promise((resolve) => {
    const field = h('input', {
      id: 'new-key',
      type: 'text',
      readonly: true,
      value: secret,
      spellcheck: 'false',
      'aria-describedby': 'new-key-once',
    });
    const status = h('span', { class: 'copy-status', role: 'status' });
    const dialog = modal(
      'secret-title',
      h('h2', { id: 'secret-title' }, t('keyShownTitle', { name })),
      h('p', { id: 'new-key-once', class: 'warning' }, '⚠ ', t('keyShownOnce')),
      h(
        'div',
        { class: 'secret' },
        field,
        h(
          'button',
          {
            type: 'button',
            id: 'copy-key',
            onclick: () => {
              field.select();
              navigator.clipboard.writeText(secret).then(
                () => (status.textContent = t('copied')),
                () => (status.textContent = t('copyFailed')),
              );
            },
          },
          t('copy'),
        ),
        status,
      ),
      h('div', { class: 'buttons' }, h('button', { type: 'button', class: 'primary', onclick: () => dialog.close() }, t('done'))),
    );
    dialog.addEventListener('close', () => resolve());
    field.select();
  });
}

function lines(text: string): string[] | null {
  const list = text
    .split(/[\n,]/)
    .map((s) => s.trim())
    .filter((s) => s !== '');
  return list.length === 0 ? null : list;
}

/** The create / edit form; resolves with the saved key (and its secret when created), or null. */
function keyForm(existing: KeyJson | null): Promise<{ record: KeyJson; key?: string } | null> {
  return new Promise((resolve) => {
    let result: { record: KeyJson; key?: string } | null = null;
    const id = (name: string): string => `f-${name}`;
    const input = (name: string, value: string, extra: Record<string, string | boolean> = {}): HTMLInputElement =>
      h('input', { id: id(name), name, value, ...extra });
    const name = input('name', existing?.name ?? '', { required: true, maxlength: '64', autocomplete: 'off' });
    const note = h(
      'textarea',
      { id: id('note'), name: 'note', rows: 2, maxlength: 2000, 'aria-describedby': 'h-note' },
      existing?.note ?? '',
    );
    const enabled = input('enabled', '', { type: 'checkbox', checked: existing?.enabled ?? true });
    const expiresShown = existing?.expires_at ?? '';
    const expires = input('expires', expiresShown, { 'aria-describedby': 'h-expires', placeholder: '30d', autocomplete: 'off' });
    const models = h(
      'textarea',
      { id: id('models'), name: 'models', rows: 2, 'aria-describedby': 'h-models' },
      (existing?.models ?? []).join('\n'),
    );
    const origins = h(
      'textarea',
      { id: id('origins'), name: 'origins', rows: 2, 'aria-describedby': 'h-origins' },
      (existing?.origins ?? []).join('\n'),
    );
    const limits = LIMIT_FIELDS.map((f) => ({
      ...f,
      el: input(f.name, existing?.limits[f.name] == null ? '' : String(existing.limits[f.name]), {
        type: 'number',
        min: '1',
        step: '1',
        inputmode: 'numeric',
      }),
    }));
    const error = h('p', { class: 'error', role: 'alert', id: 'form-error' });
    const fieldRow = (label: Key, el: HTMLElement, help?: Key): HTMLElement =>
      h(
        'div',
        { class: 'field' },
        h('label', { for: el.id }, t(label)),
        el,
        help === undefined ? null : h('p', { class: 'help', id: `h-${el.id.slice(2)}` }, t(help)),
      );

    const form = h(
      'form',
      {
        novalidate: true,
        onsubmit: (e: Event) => {
          e.preventDefault();
          for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
          const body: Record<string, unknown> = {};
          if (existing === null || name.value !== existing.name) body.name = name.value.trim();
          if (existing === null ? note.value !== '' : note.value !== existing.note) body.note = note.value;
          if (existing === null ? !enabled.checked : enabled.checked !== existing.enabled) body.enabled = enabled.checked;
          if (expires.value.trim() !== expiresShown) body.expires = expires.value.trim() === '' ? null : expires.value.trim();
          const m = lines(models.value);
          if (JSON.stringify(m) !== JSON.stringify(existing?.models ?? null)) body.models = m;
          const o = lines(origins.value);
          if (JSON.stringify(o) !== JSON.stringify(existing?.origins ?? null)) body.origins = o;
          const l: Partial<Limits> = {};
          for (const f of limits) {
            const v = f.el.value.trim() === '' ? null : Number(f.el.value);
            if (v !== (existing?.limits[f.name] ?? null)) l[f.name] = v;
          }
          if (Object.keys(l).length > 0) body.limits = l;
          if (existing !== null && Object.keys(body).length === 0) {
            dialog.close();
            return;
          }
          const call =
            existing === null
              ? api<KeyJson & { key?: string }>('POST', 'keys', body)
              : api<KeyJson & { key?: string }>('PATCH', `keys/${encodeURIComponent(existing.id)}`, body);
          call.then(
            (record) => {
              result = record.key === undefined ? { record } : { record, key: record.key };
              dialog.close();
            },
            (err: unknown) => {
              error.textContent = err instanceof Error ? err.message : String(err);
              // The field at fault: the error's `param`, or the path in a schema message ("body/limits/rpm must be …").
              const path = err instanceof ApiError ? (err.param ?? /^body\/([\w/]+)/.exec(err.message)?.[1] ?? null) : null;
              const param = path?.split(/[./]/).at(-1);
              const field = param === undefined ? null : form.querySelector<HTMLElement>(`[name="${CSS.escape(param)}"]`);
              if (field !== null) {
                field.setAttribute('aria-invalid', 'true');
                field.focus();
              }
            },
          );
        },
      },
      h('h2', { id: 'form-title' }, existing === null ? t('createTitle') : t('editTitle', { name: existing.name })),
      fieldRow('name', name),
      fieldRow('note', note, 'noteHelp'),
      h('div', { class: 'field check' }, enabled, h('label', { for: enabled.id }, t('enabledField'))),
      fieldRow('expires', expires, 'expiresHelp'),
      fieldRow('models', models, 'modelsHelp'),
      fieldRow('origins', origins, 'originsHelp'),
      h(
        'fieldset',
        { 'aria-describedby': 'h-limits' },
        h('legend', {}, t('limits')),
        h('p', { class: 'help', id: 'h-limits' }, t('limitsHelp')),
        h('div', { class: 'limits' }, ...limits.map((f) => h('div', { class: 'field' }, h('label', { for: f.el.id }, t(f.label)), f.el))),
      ),
      error,
      h(
        'div',
        { class: 'buttons' },
        h('button', { type: 'button', onclick: () => dialog.close() }, t('cancel')),
        h('button', { type: 'submit', class: 'primary' }, existing === null ? t('create') : t('save')),
      ),
    );
    const dialog = modal('form-title', form);
    dialog.classList.add('wide');
    dialog.addEventListener('close', () => resolve(result));
    name.focus();
  });
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

// The key create / edit form. Validation is the admin API's: its message is shown next to the
// form, and the field it names is marked. A PATCH carries only the fields that changed.
import { ApiError, api, type KeyJson, type Limits } from './api.js';
import { modal } from './dialogs.js';
import { h } from './dom.js';
import { t, type Key } from './i18n.js';
import { fieldFor, ruleFields } from './key-rules.js';

export const LIMIT_FIELDS: readonly { name: keyof Limits; label: Key }[] = [
  { name: 'rpm', label: 'rpm' },
  { name: 'tpm', label: 'tpm' },
  { name: 'tpd', label: 'tpd' },
  { name: 'concurrency', label: 'concurrency' },
];

function lines(text: string): string[] | null {
  const list = text
    .split(/[\n,]/)
    .map((s) => s.trim())
    .filter((s) => s !== '');
  return list.length === 0 ? null : list;
}

/** The create / edit form; resolves with the saved key (and its secret when created), or null. */
export function keyForm(existing: KeyJson | null): Promise<{ record: KeyJson; key?: string } | null> {
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
    const rules = ruleFields(existing);
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
          try {
            Object.assign(body, rules.changes());
          } catch (err) {
            error.textContent = (err as Error).message;
            return;
          }
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
              const field = path === null ? null : fieldFor(form, path);
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
      ...rules.nodes,
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

// The console's dialogs: a modal <dialog> (focus kept inside, Esc closes), a confirmation before
// something that cannot be undone, and a new key's secret shown once with a copy button.
import { h } from './dom.js';
import { t } from './i18n.js';

/** A modal dialog (focus kept inside, Esc closes); removed from the page when it closes. */
export function modal(labelledBy: string, ...children: (Node | null)[]): HTMLDialogElement {
  const dialog = h('dialog', { 'aria-labelledby': labelledBy }, ...children);
  dialog.addEventListener('close', () => dialog.remove());
  document.body.appendChild(dialog);
  dialog.showModal();
  return dialog;
}

/** Asks before doing something that cannot be undone; resolves true on confirmation. */
export function confirmDialog(title: string, text: string, action: string): Promise<boolean> {
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
export function showSecret(name: string, secret: string): Promise<void> {
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

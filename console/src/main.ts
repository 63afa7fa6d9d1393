// The console's shell: sign-in, the header (pages, language, sign-out) and the page named by the
// URL's fragment (#keys, #usage, #live). Each page is a function that fills `main` and returns a
// function that stops it (the live page's polling).
import { ApiError, adminKey, api, forgetKey, rememberKey, whenRefused } from './api.js';
import { h, replace } from './dom.js';
import { LANGS, lang, setLang, t, type Key } from './i18n.js';
import { keysPage } from './keys.js';
import { livePage } from './live.js';
import { usagePage } from './usage.js';

type Page = (main: HTMLElement) => () => void;
const PAGES: readonly { id: string; label: Key; page: Page }[] = [
  { id: 'keys', label: 'navKeys', page: keysPage },
  { id: 'usage', label: 'navUsage', page: usagePage },
  { id: 'live', label: 'navLive', page: livePage },
];

const root = document.getElementById('app')!;
let stopPage: () => void = () => {};
/** Why the sign-in page is shown (a refused key), shown once. */
let signInMessage: Key | null = null;

function currentPage(): (typeof PAGES)[number] {
  const id = location.hash.replace(/^#\/?/, '');
  return PAGES.find((p) => p.id === id) ?? PAGES[0]!;
}

function languageSwitch(): HTMLElement {
  const select = h(
    'select',
    {
      id: 'lang',
      onchange: (e: Event) => {
        setLang((e.target as HTMLSelectElement).value as 'en' | 'zh-CN');
        render();
      },
    },
    ...LANGS.map((l) => h('option', { value: l.lang, lang: l.lang, selected: l.lang === lang() }, l.label)),
  );
  return h(
    'label',
    { class: 'lang' },
    h('span', { class: 'visually-hidden' }, t('language')),
    h('span', { 'aria-hidden': 'true' }, '文/A'),
    select,
  );
}

function signIn(): void {
  document.title = `${t('signInTitle')} · ${t('appTitle')}`;
  const input = h('input', { id: 'admin-key', type: 'password', autocomplete: 'off', spellcheck: 'false', required: true });
  const error = h('p', { id: 'signin-error', class: 'error', role: 'alert' });
  if (signInMessage !== null) error.textContent = t(signInMessage);
  signInMessage = null;
  const button = h('button', { type: 'submit', class: 'primary' }, t('signIn'));
  const form = h(
    'form',
    {
      class: 'card signin',
      'aria-labelledby': 'signin-title',
      onsubmit: (e: Event) => {
        e.preventDefault();
        const key = input.value.trim();
        if (key === '') return;
        button.disabled = true;
        button.textContent = t('signingIn');
        error.textContent = '';
        api('GET', 'keys', undefined, key)
          .then(() => {
            rememberKey(key);
            render();
          })
          .catch((err: unknown) => {
            button.disabled = false;
            button.textContent = t('signIn');
            if (err instanceof ApiError && err.status === 401) error.textContent = t('wrongKey');
            else if (err instanceof ApiError && err.status === 429) error.textContent = t('blocked', { seconds: err.retryAfter ?? 60 });
            else error.textContent = err instanceof ApiError ? err.message : t('networkError', { message: String(err) });
            input.select();
          });
      },
    },
    h('h1', { id: 'signin-title' }, t('signInTitle')),
    h('p', {}, t('signInIntro')),
    h('label', { for: 'admin-key' }, t('adminKey')),
    input,
    error,
    button,
  );
  replace(
    root,
    h('header', { class: 'top' }, h('span', { class: 'brand' }, t('appTitle')), languageSwitch()),
    h('main', { id: 'main' }, form),
  );
  input.focus();
}

function render(): void {
  stopPage();
  stopPage = () => {};
  document.documentElement.lang = lang();
  if (adminKey() === null) {
    signIn();
    return;
  }
  const page = currentPage();
  document.title = `${t(page.label)} · ${t('appTitle')}`;
  const main = h('main', { id: 'main', tabindex: -1 });
  const nav = h(
    'nav',
    { 'aria-label': t('appTitle') },
    h(
      'ul',
      {},
      ...PAGES.map((p) =>
        h('li', {}, h('a', { href: `#${p.id}`, 'aria-current': p === page ? 'page' : undefined, 'data-page': p.id }, t(p.label))),
      ),
    ),
  );
  const signOut = h(
    'button',
    {
      type: 'button',
      id: 'sign-out',
      onclick: () => {
        forgetKey();
        render();
      },
    },
    t('signOut'),
  );
  replace(
    root,
    h('a', { class: 'skip', href: '#main', onclick: (e: Event) => (e.preventDefault(), main.focus()) }, t('skip')),
    h(
      'header',
      { class: 'top' },
      h('span', { class: 'brand' }, t('appTitle')),
      nav,
      h('div', { class: 'tools' }, languageSwitch(), signOut),
    ),
    main,
    h('div', { id: 'notice', class: 'notice', role: 'status', 'aria-live': 'polite' }),
  );
  stopPage = page.page(main);
}

whenRefused(() => {
  forgetKey();
  signInMessage = 'sessionEnded';
  render();
});

window.addEventListener('hashchange', () => {
  render();
  document.getElementById('main')?.focus();
});
setLang(lang());
render();

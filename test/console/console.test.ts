// The admin console in a real browser: Debian's Chromium (/usr/bin/chromium) driven by
// playwright-core, against a real gateway on a real socket in front of the fake llama-server.
// An operator signs in (a wrong admin key is refused), creates a key and sees it once, gives it a
// budget and a policy (the API's refusal names the field; only what changed is sent) and sees them
// in the keys table in words, uses it as an end user and watches the live view and the usage chart
// change, finds the end user and the cost in the usage tables, drills into that day's requests,
// disables the key and sees the API refuse it, switches to Chinese and signs out. A note made of HTML renders
// as text: no dialog opens, no element is made from it, no CSP violation is even attempted.
// Screenshots of each page, light and dark, are taken every run; with UPDATE_SCREENSHOTS=1 they go
// to docs/screenshots/ (README shows them), else to a temporary folder (a test run leaves the
// working tree as it was).
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { chromium, type Browser, type Page } from 'playwright-core';
import { KeyRegistry } from '../../src/keys/key-registry.js';
import { parsePrices } from '../../src/usage/prices.js';
import { KEY_A, KEY_B, bearer, chatBody, request, startGateway, tempStore } from '../helpers.js';
import { ensureConsoleBuilt } from './build.js';

const CHROMIUM = '/usr/bin/chromium';

const ADMIN = 'adm-console-0123456789abcdefghijklmnop';
const XSS_NOTE = `<script>alert(1)</script><img src=x onerror="alert(2)"> for the "team" & co`;
const SHOTS =
  process.env.UPDATE_SCREENSHOTS === '1'
    ? fileURLToPath(new URL('../../docs/screenshots/', import.meta.url))
    : mkdtempSync(join(tmpdir(), 'console-shots-'));

async function shoot(page: Page, name: string): Promise<void> {
  for (const scheme of ['light', 'dark'] as const) {
    await page.emulateMedia({ colorScheme: scheme });
    await page.screenshot({ path: join(SHOTS, `${name}-${scheme}.png`), fullPage: true });
  }
  await page.emulateMedia({ colorScheme: 'light' });
}

if (!existsSync(CHROMIUM)) t.plan(0, `${CHROMIUM} is not installed (apt-get install chromium)`);
else
  t.test('the admin console, end to end in Chromium', async (t) => {
    ensureConsoleBuilt();
    mkdirSync(SHOTS, { recursive: true });
    if (process.env.UPDATE_SCREENSHOTS !== '1') t.teardown(() => rmSync(SHOTS, { recursive: true, force: true }));
    const store = tempStore(t);
    const registry = new KeyRegistry([KEY_A, KEY_B], store);
    // Prices high enough that one small request costs more than a cent.
    const gw = await startGateway(
      t,
      { adminKey: ADMIN, prices: parsePrices('*=1000/2000'), priceCurrency: 'EUR' },
      {},
      { registry, usageFlushMs: 50, discovery: true },
    );

    const browser: Browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    t.teardown(() => browser.close());
    const context = await browser.newContext({ viewport: { width: 1280, height: 820 }, locale: 'en-US', timezoneId: 'UTC' });
    const page = await context.newPage();
    const dialogs: string[] = [];
    const consoleErrors: string[] = [];
    const pageErrors: string[] = [];
    const urls: string[] = [];
    page.on('dialog', (d) => {
      dialogs.push(d.message());
      void d.dismiss();
    });
    page.on('console', (m) => {
      if (m.type() === 'error' || m.type() === 'warning') consoleErrors.push(m.text());
    });
    page.on('pageerror', (e) => pageErrors.push(e.message));
    page.on('request', (r) => urls.push(r.url()));

    // Sign-in; a wrong admin key is refused.
    await page.goto(`${gw.url}/admin/`);
    await page.locator('#admin-key').waitFor();
    t.equal(await page.locator('h1').textContent(), 'Sign in');
    await shoot(page, 'sign-in');
    await page.fill('#admin-key', 'not-the-admin-key');
    await page.click('button[type=submit]');
    await page.locator('#signin-error:not(:empty)').waitFor();
    t.equal(await page.locator('#signin-error').textContent(), 'This admin key was refused. Check GATEWAY_ADMIN_KEY and try again.');
    t.equal(await page.evaluate('sessionStorage.length'), 0, 'a refused key is not kept');

    await page.fill('#admin-key', ADMIN);
    await page.click('button[type=submit]');
    await page.locator('h1', { hasText: 'Keys' }).waitFor();
    t.equal(await page.locator('.empty').textContent(), 'No stored keys yet. Keys from LLM_API_KEYS are not listed here.');

    // Create a key with an HTML note; its secret is shown once.
    await page.click('#new-key-button');
    await page.fill('#f-name', 'alice-app');
    await page.fill('#f-note', XSS_NOTE);
    await page.fill('#f-rpm', '0');
    await page.click('dialog button[type=submit]');
    await page.locator('#form-error:not(:empty)').waitFor();
    t.match(await page.locator('#form-error').textContent(), /limits\/rpm must be >= 1/, "the API's validation message is shown");
    t.equal(await page.locator('#f-rpm').getAttribute('aria-invalid'), 'true', 'and the field it names is marked');
    await page.fill('#f-rpm', '600');
    await page.click('dialog button[type=submit]');
    const secretField = page.locator('#new-key');
    await secretField.waitFor();
    const secret = await secretField.inputValue();
    t.match(secret, /^sk-[A-Za-z0-9_-]{32}$/, 'the new key is shown');
    t.equal(
      await page.locator('#new-key-once').textContent(),
      '⚠ Copy this key now: you will not see it again. The gateway keeps only its digest.',
    );
    await page.click('dialog button.primary');
    await page.locator('[data-key="alice-app"]').waitFor();
    t.notOk((await page.content()).includes(secret), 'the secret is gone from the page once the dialog closes');
    const row = page.locator('tr', { has: page.locator('[data-key="alice-app"]') });
    t.equal(await row.locator('.note').textContent(), XSS_NOTE, 'the note is shown as text');
    t.equal(await row.locator('.badge').textContent(), '● Enabled');
    t.equal(await page.locator('img').count(), 0, 'no element was made from the note');
    t.equal(await page.locator('#app script').count(), 0);
    t.match(await row.textContent(), /rpm 600/);
    t.equal(await row.locator('td[data-label="Budget"]').textContent(), 'none');
    t.equal(await row.locator('td[data-label="Policy"]').textContent(), 'defaults');

    // A budget and a policy: the API's refusal names the field, a malformed parameter rule is caught
    // before sending, and the PATCH carries only what changed.
    await row.locator('button[data-action=edit]').click();
    await page.fill('#f-budgets-month', '0');
    await page.click('dialog button[type=submit]');
    await page.locator('#form-error:not(:empty)').waitFor();
    t.match(await page.locator('#form-error').textContent(), /budgets\/month must be >= 1/, "the API's message for a budget");
    t.equal(await page.locator('#f-budgets-month').getAttribute('aria-invalid'), 'true', 'and the budget field is marked');
    await page.fill('#f-budgets-month', '1000000');
    await page.fill('#f-budgets-per_user-day', '5000');
    await page.fill('#f-policy-max_tokens', '512');
    await page.fill('#f-policy-params', 'id_slot=allow\nlora');
    await page.click('dialog button[type=submit]');
    await page.locator('#form-error', { hasText: 'lora' }).waitFor();
    t.equal(await page.locator('#form-error').textContent(), 'Parameters: “lora” is not NAME=allow, NAME=remove or NAME=refuse.');
    t.equal(await page.locator('#f-policy-params').getAttribute('aria-invalid'), 'true');
    await page.fill('#f-policy-params', 'id_slot=allow');
    const patch = page.waitForRequest((r) => r.method() === 'PATCH');
    await page.click('dialog button[type=submit]');
    t.same(
      JSON.parse((await patch).postData() ?? ''),
      { policy: { max_tokens: 512, params: { id_slot: 'allow' } }, budgets: { month: 1000000, per_user: { day: 5000 } } },
      'only what changed is sent',
    );
    await page.locator('dialog').waitFor({ state: 'detached' });
    const month = row.locator('.budget-line[data-period=month]');
    await month.waitFor();
    t.equal(await month.locator('.budget-text').textContent(), 'month 0% of 1,000,000', 'the budget in words');
    t.match(await month.textContent(), /resets \d{2}\/\d{2}\/\d{4}, \d{2}:\d{2}/);
    t.equal(await row.locator('.budget > .muted').nth(0).textContent(), 'hard: refused once spent · UTC');
    t.equal(await row.locator('.budget > .muted').nth(1).textContent(), 'per end user: day ≤ 5,000');
    t.same(
      await row.locator('.policy > div').allTextContents(),
      ['output ≤ 512 tokens', 'parameters: id_slot=allow'],
      'the policy, a rule a line',
    );
    // Opened again, the form shows what is stored; saving unchanged sends nothing.
    await row.locator('button[data-action=edit]').click();
    t.equal(await page.inputValue('#f-budgets-month'), '1000000');
    t.equal(await page.inputValue('#f-policy-params'), 'id_slot=allow');
    t.equal(await page.inputValue('#f-budgets-mode'), 'hard');
    await page.locator('dialog .buttons').scrollIntoViewIfNeeded();
    await shoot(page, 'key-form');
    await page.click('dialog button[type=submit]');
    await page.locator('dialog').waitFor({ state: 'detached' });

    // The live view before and after a request with the new key.
    await page.click('a[data-page="live"]');
    await page.locator('#requests-last-minute').waitFor();
    t.equal(await page.locator('#requests-last-minute').textContent(), '0');
    t.equal(await page.locator('.upstream .badge').textContent(), '✓ Ready');
    t.match(await page.locator('.upstream dl').textContent(), /gpt-oss-20b/);
    const chat = await request(gw.port, {
      path: '/v1/chat/completions',
      headers: { 'content-type': 'application/json', 'x-openwebui-user-id': 'ada-7', ...bearer(secret) },
      body: chatBody(),
    });
    t.equal(chat.status, 200, 'the new key works on the API');
    await page.locator('#requests-last-minute', { hasText: '1' }).waitFor({ timeout: 15_000 });
    t.match(await page.locator('table.live-keys').textContent(), /alice-app/, 'the key shows in the live view');
    t.not(await page.locator('#tokens-per-second').textContent(), '0', 'tokens per second moved');
    await shoot(page, 'live');

    // Usage: the chart and tables, a day's requests, CSV.
    await page.click('a[data-page="usage"]');
    await page.locator('#usage-chart canvas').waitFor();
    t.match(await page.locator('.u-legend').textContent(), /alice-app/, 'the chart has a series for the key');
    const perKey = page.locator('section', { has: page.locator('h2', { hasText: 'Per key' }) });
    t.match(await perKey.textContent(), /alice-app1/, 'the per-key table counts its request');
    t.match(await perKey.locator('thead').textContent(), /Cost \(EUR\)$/, 'with prices set, a cost column');
    t.match(await perKey.locator('tbody tr').first().locator('td').last().textContent(), /^0\.\d{2,6}$/);
    const perUser = page.locator('section', { has: page.locator('h2', { hasText: 'Per end user' }) });
    t.match(await perUser.locator('tbody').textContent(), /^ada-7alice-app1/, 'the end user has its row, with its key');
    const filtered = page.waitForResponse((r) => r.url().includes('by=user&key=alice-app'));
    await page.selectOption('#user-key', 'alice-app');
    t.equal((await filtered).status(), 200);
    await perUser.locator('tbody tr').first().waitFor();
    t.match(await perUser.locator('tbody').textContent(), /^ada-7alice-app1/, 'filtered by the key');
    const today = new Date().toISOString().slice(0, 10);
    await page.click(`button[data-day="${today}"]`);
    await page.locator('table.requests').waitFor();
    t.match(
      await page.locator('table.requests tbody').textContent(),
      /alice-appada-7gpt-oss-20b\/v1\/chat\/completions200/,
      "the day's request is listed, with its end user",
    );
    t.match(await page.locator('table.requests thead').textContent(), /End user.*Cost \(EUR\)/);
    const download = page.waitForEvent('download');
    await page.click('#export-usage');
    const csvText = await (await download).createReadStream().then(async (s) => {
      const chunks: Buffer[] = [];
      for await (const c of s) chunks.push(c as Buffer);
      return Buffer.concat(chunks).toString('utf8');
    });
    t.match(
      csvText,
      new RegExp(`^\\ufeffday,key,requests,tokens\\r\\n${today},alice-app,1,\\d+\\r\\n$`),
      'the CSV holds what the chart shows',
    );
    await page.click('input[name=by][value=model]');
    await page.locator('.u-legend', { hasText: 'gpt-oss-20b' }).waitFor();
    await page.click('input[name=by][value=key]');
    await page.locator('.u-legend', { hasText: 'alice-app' }).waitFor();
    await page.click(`button[data-day="${today}"]`);
    await page.locator('table.requests').waitFor();
    await shoot(page, 'usage');

    // Disable the key: the API refuses it.
    await page.click('a[data-page="keys"]');
    await page.click('tr:has([data-key="alice-app"]) button[data-action=toggle]');
    await page.locator('tr:has([data-key="alice-app"]) .badge', { hasText: 'Disabled' }).waitFor();
    t.equal(await page.locator('tr:has([data-key="alice-app"]) .badge').textContent(), '○ Disabled');
    const refused = await request(gw.port, {
      path: '/v1/chat/completions',
      headers: { 'content-type': 'application/json', ...bearer(secret) },
      body: chatBody(),
    });
    t.equal(refused.status, 401, 'a disabled key gets 401');
    t.equal((JSON.parse(refused.text) as { error: { code: string } }).error.code, 'key_disabled');
    t.equal(await month.locator('.budget-text').textContent(), 'month <1% of 1,000,000', "the key's use counts against its budget");

    // A soft budget spent: said in words (and a mark), not only in colour.
    const bob = await request(gw.port, {
      method: 'POST',
      path: '/admin/keys',
      headers: { 'content-type': 'application/json', ...bearer(ADMIN) },
      body: JSON.stringify({ name: 'bob-app', budgets: { day: 5, mode: 'soft' } }),
    });
    const bobKey = (JSON.parse(bob.text) as { key: string }).key;
    const used = await request(gw.port, {
      path: '/v1/chat/completions',
      headers: { 'content-type': 'application/json', ...bearer(bobKey) },
      body: chatBody(),
    });
    t.equal(used.status, 200, 'a soft budget never refuses');
    await page.click('a[data-page="usage"]');
    await page.click('a[data-page="keys"]');
    const bobDay = page.locator('tr:has([data-key="bob-app"]) .budget-line[data-period=day] .budget-text');
    await bobDay.waitFor();
    t.match(await bobDay.textContent(), /^⚠ day \d+% of 5 — over, warned only$/);
    t.equal(await page.locator('tr:has([data-key="bob-app"]) .budget > .muted').textContent(), 'soft: warns, never refuses · UTC');
    await shoot(page, 'keys');
    await page.setViewportSize({ width: 390, height: 844 });
    await shoot(page, 'keys-phone');
    await page.setViewportSize({ width: 1280, height: 820 });

    // Revoke asks first; cancelling keeps the key.
    await page.click('tr:has([data-key="alice-app"]) button[data-action=revoke]');
    await page.locator('dialog [data-confirm]').waitFor();
    await page.keyboard.press('Escape');
    await page.locator('dialog').waitFor({ state: 'detached' });
    t.equal(await page.locator('[data-key="alice-app"]').count(), 1, 'Escape cancels a revoke');

    // Chinese.
    await page.selectOption('#lang', 'zh-CN');
    await page.locator('h1', { hasText: '密钥' }).waitFor();
    t.equal(await page.locator('a[data-page="usage"]').textContent(), '用量');
    t.equal(await page.locator('tr:has([data-key="alice-app"]) .badge').textContent(), '○ 已停用');
    t.equal(await month.locator('.budget-text').textContent(), '月：已用 <1%，共 1,000,000');
    t.same(await page.locator('tr:has([data-key="alice-app"]) td[data-label="策略"] .policy > div').allTextContents(), [
      '输出 ≤ 512 token',
      '参数：id_slot=allow',
    ]);
    t.equal(await page.evaluate('document.documentElement.lang'), 'zh-CN');
    await shoot(page, 'keys-zh-CN');
    await page.selectOption('#lang', 'en');
    await page.locator('h1', { hasText: 'Keys' }).waitFor();

    // Sign out forgets the key.
    await page.click('#sign-out');
    await page.locator('#admin-key').waitFor();
    t.equal(await page.evaluate('sessionStorage.length'), 0, 'signed out: nothing kept');

    t.same(dialogs, [], 'no dialog was opened (nothing from the note ran)');
    t.same(pageErrors, [], 'no script error');
    // The refusals the test asked for (the wrong admin key, the invalid limit) are the only failed loads.
    t.same(
      consoleErrors.filter((m) => !/^Failed to load resource: the server responded with a status of 40[01]/.test(m)),
      [],
      'no console error, no CSP violation',
    );
    t.same(
      urls.filter((u) => u.includes(ADMIN) || u.includes(secret)),
      [],
      'neither the admin key nor the new key is ever in a URL',
    );
  });

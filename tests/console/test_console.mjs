// The web console in a real browser: Debian's chromium, headless, driven by playwright-core,
// against a running `seqrec serve` (run_console_test.py starts one and passes --base).
//
//   node test_console.mjs --base http://127.0.0.1:PORT --workdir DIR [--chromium /usr/bin/chromium]
//                         [--example examples/movielens]       (admin key in SEQREC_CONSOLE_KEY)
//
// Checks: the page loads (at / and /console) with no console error or warning, no page error
// and no failed request; the model card shows the served model; the traffic charts move
// with traffic; try-it answers (typed history, toggles, a stored user) are the API's top-k in
// the API's order, from the very request body the API gets; the key field gates writes, and
// the key really goes out as a Bearer header; server strings are shown as text, never markup;
// the page fits a phone's width. Routes the server does not have yet (GET /models, /users,
// /items answering 404 "no route") must hide their features; those 404s are the only errors
// allowed. Screenshots go to DIR/console.png (and DIR/console-narrow.png).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, a, i, all) => (a.startsWith('--') ? [...pairs, [a.slice(2), all[i + 1]]] : pairs), []),
);
const BASE = args.base;
const WORKDIR = args.workdir;
const KEY = process.env.SEQREC_CONSOLE_KEY || '';
const OPTIONAL_ROUTES = new Set(['/models', '/users', '/items']);
if (!BASE || !WORKDIR) {
  console.error('usage: node test_console.mjs --base URL --workdir DIR [--chromium PATH]');
  process.exit(2);
}
fs.mkdirSync(WORKDIR, { recursive: true });

// ------------------------------------------------------------------ the API, directly

async function api(method, route, body, headers = {}) {
  const res = await fetch(BASE + route, {
    method,
    headers: { ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}), ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let data = null;
  try {
    data = JSON.parse(text);
  } catch {
    data = null;
  }
  return { status: res.status, data, text };
}

async function apiTopK(body) {
  const r = await api('POST', '/recommend', body);
  assert.equal(r.status, 200, `POST /recommend ${JSON.stringify(body)} → ${r.status} ${r.text}`);
  return r.data.recommendations.map((x) => String(x.id));
}

// Background traffic for the charts: a bounded number of requests to this loopback server.
function traffic({ requests, perSecond }) {
  let sent = 0;
  let stopped = false;
  const done = (async () => {
    while (!stopped && sent < requests) {
      const user = String(1 + (sent % 600));
      await api('POST', '/recommend', { user_id: user, k: 10 }).catch(() => {});
      sent += 1;
      await new Promise((r) => setTimeout(r, 1000 / perSecond));
    }
  })();
  return { stop: async () => { stopped = true; await done; }, sent: () => sent };
}

// ------------------------------------------------------------------ the checks

const results = [];
async function step(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    results.push({ name, ok: true });
    console.log(`ok    ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    results.push({ name, ok: false });
    console.log(`FAIL  ${name}: ${e && e.stack ? e.stack : e}`);
  }
}

const browser = await chromium.launch({
  executablePath: args.chromium || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, deviceScaleFactor: 1 });

// Everything the browser says or fails at, per page; judged at the end.
const seen = { console: [], pageErrors: [], failed: [], badResponses: [], allowed: new Set(), hidden: new Set() };
let expectedFailures = []; // [{method, path, status}] a step provokes on purpose
const bodyChecks = [];
let navigating = false;

function watch(page, label) {
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') seen.console.push({ page: label, type: m.type(), text: m.text(), url: m.location().url || '' });
  });
  page.on('pageerror', (e) => seen.pageErrors.push(`${label}: ${e.message}`));
  page.on('requestfailed', (req) => {
    if (navigating && req.failure()?.errorText === 'net::ERR_ABORTED') return; // polls cut short by our own reload
    seen.failed.push(`${label}: ${req.method()} ${req.url()}: ${req.failure()?.errorText}`);
  });
  page.on('response', (res) => {
    if (res.status() < 400) return;
    const url = new URL(res.url());
    const method = res.request().method();
    if (res.status() === 404 && OPTIONAL_ROUTES.has(url.pathname)) {
      // A route being added: allowed to be missing, if the server says exactly that.
      bodyChecks.push(res.text().then((text) => {
        if (/"message": *"no route /.test(text)) {
          seen.allowed.add(res.url());
          seen.hidden.add(url.pathname);
        } else {
          seen.badResponses.push(`${label}: ${method} ${res.url()} → 404 ${text}`);
        }
      }));
      return;
    }
    if (expectedFailures.some((f) => f.method === method && f.path === url.pathname && f.status === res.status())) {
      seen.allowed.add(res.url());
      return;
    }
    seen.badResponses.push(`${label}: ${method} ${res.url()} → ${res.status()}`);
  });
}

const page = await context.newPage();
watch(page, 'main');
const sentBodies = []; // what the browser POSTed to /recommend
page.on('request', (req) => {
  if (req.method() === 'POST' && new URL(req.url()).pathname === '/recommend') sentBodies.push(JSON.parse(req.postData() || 'null'));
});

const model = (await api('GET', '/model')).data;
const routes = {};
for (const r of OPTIONAL_ROUTES) {
  const probe = await api('GET', r === '/items' ? '/items?q=a&limit=1' : r === '/users' ? '/users?limit=1' : r);
  routes[r] = probe.status === 200;
}
console.log(`server: model ${model.source} (${model.catalog_size} items); routes present: ${JSON.stringify(routes)}`);

async function lastResultIds() {
  return page.$$eval('#result-table tbody tr', (rows) => rows.map((r) => r.dataset.id));
}

// Press Recommend and wait for this press's answer.
async function pressRecommend() {
  const before = sentBodies.length;
  const seq = Number((await page.getAttribute('#result', 'data-seq')) || 0);
  await page.click('#go');
  await page.waitForFunction((n) => Number(document.getElementById('result').dataset.seq || 0) > n, seq);
  assert.equal(sentBodies.length, before + 1, 'one POST /recommend per press');
  assert.equal(await page.getAttribute('#result', 'data-state'), 'done', `the console showed an error: ${await page.textContent('#result-message')}`);
  return sentBodies[sentBodies.length - 1];
}

// Each try-it step starts from the default options, whatever the step before left.
async function resetOptions() {
  await page.fill('#opt-k', '10');
  await page.uncheck('#opt-seen');
  await page.fill('#opt-cand', '');
  await page.fill('#opt-excl', '');
}

const bg = traffic({ requests: 2000, perSecond: 12 });

await step('page loads at / with the model card of the served model', async () => {
  await page.goto(BASE + '/', { waitUntil: 'load' });
  assert.equal(await page.title(), 'seqrec console');
  await page.waitForSelector('#model-cards[data-state="ready"]', { timeout: 15000 });
  await page.waitForFunction(() => document.body.dataset.loaded === 'yes');
  const cards = await page.$$('#model-cards .card');
  assert.equal(cards.length, routes['/models'] ? (await api('GET', '/models')).data.models.length : 1);
  const card = page.locator('#model-cards .card').first();
  assert.equal(await card.getAttribute('data-source'), 'pmixer');
  assert.equal(model.source, 'pmixer');
  const catalog = card.locator('[data-field="catalog_size"]');
  assert.equal(Number(await catalog.getAttribute('data-value')), model.catalog_size);
  assert.equal((await catalog.textContent()).replace(/[^0-9]/g, ''), String(model.catalog_size));
  assert.equal(await card.locator('[data-field="cpu_path"]').textContent(), model.cpu_path);
  const text = await card.textContent();
  for (const want of [model.score, model.architecture.block, `d=${model.sizes.d}`, model.path]) assert.ok(text.includes(want), `model card lacks "${want}"`);
  await page.waitForSelector('#ready.ok');
  assert.ok((await page.textContent('#s-desc')).includes(model.history.replace(/^lmdb:/, '')), 'the history store is named');
  assert.match(await page.textContent('#s-state'), /^reachable/);
});

await step('features of routes the server lacks are hidden, of those it has shown', async () => {
  const missing = (await page.getAttribute('body', 'data-missing-routes')).split(' ').filter(Boolean).sort();
  assert.deepEqual(missing, Object.keys(routes).filter((r) => !routes[r]).sort());
  assert.equal(await page.isVisible('#user-browser'), routes['/users'], 'user list shown iff GET /users exists');
  await page.check('input[name="mode"][value="typed"]');
  assert.equal(await page.isVisible('#search'), routes['/items'], 'title search shown iff GET /items exists');
  assert.equal(await page.isVisible('#opt-filter'), routes['/items'], 'tag filters shown iff item metadata is served');
  await page.check('input[name="mode"][value="user"]');
});

await step('the traffic charts follow the traffic', async () => {
  const before = Number((await page.getAttribute('#traffic', 'data-scrapes')) || 0);
  await page.waitForFunction((n) => Number(document.getElementById('traffic').dataset.scrapes || 0) >= n + 2, before, { timeout: 15000 });
  await page.waitForFunction(() => parseFloat(document.getElementById('t-rps').textContent) > 0, null, { timeout: 15000 });
  await page.waitForFunction(() => /ms|s$/.test(document.getElementById('t-p50').textContent), null, { timeout: 15000 });
  const points = Number(await page.getAttribute('#c-rps', 'data-points'));
  assert.ok(points >= 2, `rps chart has ${points} points`);
  assert.ok(Number(await page.getAttribute('#c-rps', 'data-latest')) > 0, 'the latest requests/s is above 0');
  assert.match(await page.getAttribute('#c-lat', 'aria-label'), /p50 [0-9.]+k?, p99 [0-9.]+/);
  assert.ok(Number(await page.getAttribute('#c-batch', 'data-points')) >= 2);
  const routeRows = await page.$$eval('#route-table tbody tr td:first-child', (tds) => tds.map((t) => t.textContent));
  assert.ok(routeRows.includes('/recommend'), `route table: ${routeRows}`);
});

await step('try-it, typed history: the API\'s top-k in the API\'s order', async () => {
  await resetOptions();
  await page.check('input[name="mode"][value="typed"]');
  await page.click('#clear-btn');
  await page.fill('#add-ids', '1, 260 1196; 2571');
  await page.press('#add-ids', 'Enter');
  await page.fill('#add-ids', '1210');
  await page.click('#add-btn');
  assert.deepEqual(await page.$$eval('#typed-table tbody tr', (rows) => rows.map((r) => r.dataset.id)), ['1', '260', '1196', '2571', '1210']);
  await page.fill('#typed-table tbody tr[data-id="1210"] input[aria-label^="rating"]', '2');
  await page.fill('#typed-table tbody tr[data-id="1"] input[aria-label^="timestamp"]', '964982703');
  await page.fill('#opt-excl', '1198');
  const sent = await pressRecommend();
  const expected = {
    user_interactions: [{ item_id: '1', timestamp: 964982703 }, { item_id: '260' }, { item_id: '1196' }, { item_id: '2571' }, { item_id: '1210', rating: 2 }],
    k: 10,
    recommend_seen: false,
    exclude_ids: ['1198'],
  };
  const { fields, ...core } = sent;
  assert.deepEqual(core, expected, 'the body the console sent');
  const want = await apiTopK(sent);
  assert.equal(want.length, 10);
  assert.deepEqual(await lastResultIds(), want);
  assert.ok(!want.includes('1198') && !want.includes('260'), 'excluded and seen items are left out');
  const shown = shownRequest(await page.textContent('#result-request'));
  assert.deepEqual(shown, sent, 'the request shown is the one sent');
});

await step('try-it toggles: recommend_seen and candidate_ids', async () => {
  await resetOptions();
  await page.check('#opt-seen');
  await page.fill('#opt-k', '5');
  await page.fill('#opt-cand', '1 2 3 260 1196 589 5349 999999');
  await page.fill('#opt-excl', '');
  const sent = await pressRecommend();
  assert.equal(sent.recommend_seen, true);
  assert.deepEqual(sent.candidate_ids, ['1', '2', '3', '260', '1196', '589', '5349', '999999']);
  const want = await apiTopK(sent);
  assert.equal(want.length, 5);
  assert.deepEqual(await lastResultIds(), want);
});

await step('try-it, user "1" from the store: the API\'s top-k in the API\'s order', async () => {
  await resetOptions();
  await page.check('input[name="mode"][value="user"]');
  if (routes['/users']) {
    await page.click('#user-list button:text-is("1")');
    assert.equal(await page.inputValue('#user-id'), '1');
  } else {
    await page.fill('#user-id', '1');
  }
  const sent = await pressRecommend();
  const { fields, ...core } = sent;
  assert.deepEqual(core, { user_id: '1', k: 10, recommend_seen: false });
  const want = await apiTopK({ user_id: '1', k: 10 });
  assert.deepEqual(await lastResultIds(), want);
  await page.waitForSelector('#user-history ol li');
  const stored = (await api('GET', '/users/1/interactions')).data.interactions.length;
  assert.ok((await page.textContent('#user-history')).includes(`${stored} interactions`));
});

if (routes['/items']) {
  await step('try-it: item search by title adds the item with its title', async () => {
    await page.check('input[name="mode"][value="typed"]');
    await page.click('#clear-btn');
    await page.fill('#search-q', 'Toy Story');
    await page.waitForSelector('#search-results button');
    await page.click('#search-results button >> nth=0');
    const row = page.locator('#typed-table tbody tr').first();
    assert.match(await row.textContent(), /Toy Story/);
    const sent = await pressRecommend();
    assert.deepEqual(sent.fields, ['title', 'tags']);
    assert.deepEqual(await lastResultIds(), await apiTopK(sent));
    assert.ok((await page.textContent('#result-table tbody')).length > 0);
    await page.check('input[name="mode"][value="user"]');
  });
}

// A refused write is expected in this step; it must show as a message and an allowed 401.
const XSS_USER = '<img src=x onerror="window.__xss=1">';
await step('the key field gates writes, and the key goes out as a Bearer header', async () => {
  assert.ok(KEY, 'SEQREC_CONSOLE_KEY is set');
  assert.equal(await page.isVisible('#append-form'), false, 'no key: no append form');
  assert.equal(await page.isVisible('#writes-locked'), true);
  assert.equal((await api('POST', '/users/console-test/interactions', { user_interactions: [{ item_id: '1' }] })).status, 401, 'the server wants the key');

  await page.fill('#key', KEY);
  await page.click('#key-use');
  await page.waitForSelector('#append-form', { state: 'visible' });
  assert.equal(await page.evaluate(() => sessionStorage.getItem('seqrec.console.key')), KEY);
  assert.equal(await page.inputValue('#key'), '', 'the key is not left in the field');
  await page.fill('#ap-user', 'console-test');
  await page.fill('#ap-item', '1');
  await page.fill('#ap-rating', '4.5');
  await page.fill('#ap-ts', '1700000000');
  await page.click('#ap-go');
  await page.waitForFunction(() => document.getElementById('ap-status').dataset.state === 'done');
  const stored = (await api('GET', '/users/console-test/interactions')).data.interactions;
  assert.deepEqual(stored, [{ item_id: 1, timestamp: 1700000000, rating: 4.5 }]);

  // Kept in sessionStorage across a reload.
  navigating = true;
  await page.reload({ waitUntil: 'load' });
  navigating = false;
  await page.waitForSelector('#model-cards[data-state="ready"]');
  assert.equal(await page.textContent('#key-state'), 'key set: writes enabled');
  assert.equal(await page.isVisible('#append-form'), true);

  // Markup in server strings stays text: a user id and an item id that look like HTML.
  await page.fill('#ap-user', XSS_USER);
  await page.fill('#ap-item', '<b id="bold">x</b>');
  await page.fill('#ap-rating', '');
  await page.click('#ap-go');
  await page.waitForFunction(() => document.getElementById('ap-status').dataset.state === 'done');
  assert.ok((await page.textContent('#ap-status')).includes(XSS_USER));
  await page.fill('#user-id', XSS_USER);
  await page.click('#user-load');
  await page.waitForSelector('#user-history ol li');
  assert.ok((await page.textContent('#user-history')).includes('<b id="bold">x</b>'));
  assert.equal(await page.evaluate(() => document.querySelectorAll('img, #bold').length), 0, 'no element came from server text');
  assert.equal(await page.evaluate(() => window.__xss), undefined);

  // A wrong key: the write is refused (401) and the console says so.
  await page.click('#key-forget');
  assert.equal(await page.isVisible('#append-form'), false, 'forgetting the key hides the form');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('seqrec.console.key')), null);
  expectedFailures = [{ method: 'POST', path: '/users/console-test-wrong/interactions', status: 401 }];
  await page.fill('#key', 'not-the-key');
  await page.click('#key-use');
  await page.fill('#ap-user', 'console-test-wrong');
  await page.fill('#ap-item', '1');
  await page.click('#ap-go');
  await page.waitForFunction(() => document.getElementById('ap-status').dataset.state === 'error');
  assert.match(await page.textContent('#ap-status'), /401 unauthorized/);
  assert.equal((await api('GET', '/users/console-test-wrong/interactions')).data.interactions.length, 0);
  await page.click('#key-forget');
  expectedFailures = [];
  await page.fill('#user-id', '1');
  await page.click('#user-load');
  await page.waitForSelector('#user-history ol li');
});

await step('the page is also served at /console', async () => {
  const other = await context.newPage();
  watch(other, '/console');
  await other.goto(BASE + '/console', { waitUntil: 'load' });
  await other.waitForSelector('#model-cards[data-state="ready"]');
  assert.equal(await other.getAttribute('#model-cards .card', 'data-source'), 'pmixer');
  await other.waitForFunction(() => Number(document.getElementById('traffic').dataset.scrapes || 0) >= 1);
  navigating = true;
  await other.close();
  navigating = false;
});

await step('screenshots (wide and phone width; no horizontal scrolling)', async () => {
  // A fresh try-it answer for user 1 in view, with traffic flowing.
  await resetOptions();
  await page.check('input[name="mode"][value="user"]');
  await page.fill('#user-id', '1');
  await pressRecommend();
  await page.waitForTimeout(4500);
  await page.evaluate(() => window.scrollTo(0, 0));
  const wide = path.join(WORKDIR, 'console.png');
  await page.screenshot({ path: wide, fullPage: true });
  assert.ok(fs.statSync(wide).size > 20000);
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(300);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than a phone`);
  await page.screenshot({ path: path.join(WORKDIR, 'console-narrow.png'), fullPage: true });
  await page.setViewportSize({ width: 1280, height: 900 });
  console.log(`      screenshot: ${wide}`);
});

await bg.stop();
await Promise.all(bodyChecks);

await step('no console error or warning, no page error, no failed request', async () => {
  const unexpected = seen.console.filter((m) => !(m.type === 'error' && seen.allowed.has(m.url) && /^Failed to load resource: the server responded with a status of (404|401)/.test(m.text)));
  const report = [
    ...unexpected.map((m) => `console ${m.type} (${m.page}): ${m.text} ${m.url}`),
    ...seen.pageErrors.map((e) => `page error: ${e}`),
    ...seen.failed.map((f) => `failed request: ${f}`),
    ...seen.badResponses.map((r) => `error response: ${r}`),
  ];
  assert.deepEqual(report, []);
});

await browser.close();
const hidden = [...seen.hidden].sort();
console.log(hidden.length
  ? `hidden features (routes answering 404 "no route"): ${hidden.join(', ')}`
  : 'every optional route is present: no feature hidden');
console.log(`background traffic: ${bg.sent()} requests`);
const failed = results.filter((r) => !r.ok).length;
console.log(`${results.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);

// The JSON body inside the "Request" box: the lines between "POST /recommend" and the curl line.
function shownRequest(text) {
  const start = text.indexOf('\n') + 1;
  const end = text.indexOf('\n\ncurl');
  return JSON.parse(text.slice(start, end));
}

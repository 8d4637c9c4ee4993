// seqrec web console: reads this server's own routes (/model, /models, /readyz, /metrics,
// /users, /items) and asks /recommend. No framework, no network beyond this origin. Every
// string from the server reaches the page through textContent (el() below), never as HTML.
import { parse, snapshot, routeRates, latencyDelta, quantile, meanBatch } from './prom.js';
import { Chart } from './chart.js';

const $ = (id) => document.getElementById(id);
const KEY_STORE = 'seqrec.console.key';
const METRICS_EVERY_MS = 2000;
const READY_EVERY_MS = 10000;
const HISTORY_S = 300;
const USERS_PAGE = 100;
const RECOMMEND_ROUTES = new Set(['/recommend', '/iid_recommend', '/uid_recommend', '/recommend/batch']);
const NOT_API = new Set(['/metrics', '/healthz', '/readyz', 'other']);
const fmtInt = new Intl.NumberFormat('en');

const state = {
  key: sessionStorage.getItem(KEY_STORE) || '',
  model: null, // GET /model
  models: null, // GET /models, when the server has it
  features: { models: false, users: false, items: false },
  missing: new Set(), // routes this server answers "no route"
  titles: new Map(), // item id → {title, tags}, learned from /items and from recommendations
  typed: [], // [{item_id, rating, timestamp}], oldest first
  usersNext: null,
  userHistory: null,
  userHistoryId: null,
  generation: 0, // bumps when the key changes: late answers of an older load are dropped
};

// ---------------------------------------------------------------- helpers

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v == null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = String(v);
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) if (c != null && c !== false) e.append(c instanceof Node ? c : String(c));
  return e;
}

function show(node, visible) {
  node.hidden = !visible;
}

function splitIds(text) {
  return text.split(/[\s,;]+/).map((s) => s.trim()).filter(Boolean);
}

function splitTags(text) {
  return text.split(',').map((s) => s.trim()).filter(Boolean);
}

function nowSeconds() {
  return Math.floor(Date.now() / 1000);
}

function fmtMs(seconds) {
  if (seconds == null) return '–';
  const ms = seconds * 1000;
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  if (ms >= 100) return `${ms.toFixed(0)} ms`;
  if (ms >= 10) return `${ms.toFixed(1)} ms`;
  return `${ms.toFixed(2)} ms`;
}

function fmtRate(v) {
  if (v == null) return '–';
  if (v >= 100) return v.toFixed(0);
  if (v >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

function fmtAxis(v) {
  if (v === 0) return '0';
  if (v >= 1000) return `${+(v / 1000).toFixed(1)}k`;
  if (v >= 10) return `${+v.toFixed(0)}`;
  if (v >= 1) return `${+v.toFixed(1)}`;
  return `${+v.toPrecision(2)}`;
}

function fmtTime(ts) {
  // Seconds since 1970 that land in 1973–2286 read as dates; anything else stays a number.
  if (typeof ts !== 'number' || ts < 1e8 || ts > 1e10) return ts == null ? '' : String(ts);
  return new Date(ts * 1000).toISOString().slice(0, 16).replace('T', ' ');
}

function basename(path) {
  const s = String(path || '');
  return s.slice(s.lastIndexOf('/') + 1) || s;
}

// ---------------------------------------------------------------- the API

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const t0 = performance.now();
  let res;
  try {
    res = await fetch(path, { method, headers, cache: 'no-store', body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    return { ok: false, status: 0, data: null, text: '', error: `network error: ${e.message}`, ms: performance.now() - t0 };
  }
  const text = await res.text();
  const ms = performance.now() - t0;
  let data = null;
  if ((res.headers.get('content-type') || '').includes('json')) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  let error = null;
  if (!res.ok) {
    const e = data && data.error;
    error = e ? `${res.status} ${e.code}: ${e.message}` : `${res.status} ${res.statusText}`;
    if (res.status === 401) keyNeeded(method, path);
  }
  return { ok: res.ok, status: res.status, data, text, error, ms, headers: res.headers };
}

// The route does not exist on this server (as opposed to: exists and refused).
function noRoute(r) {
  return r.status === 404 && typeof r.data?.error?.message === 'string' && r.data.error.message.startsWith('no route');
}

function keyNeeded(method, path) {
  const banner = $('banner');
  banner.textContent = state.key
    ? `The server refused this key for ${method} ${path.split('?')[0]} (401).`
    : 'This server asks for an API key to read: enter it above.';
  show(banner, true);
}

// ---------------------------------------------------------------- key

function setKey(key) {
  state.key = key;
  if (key) sessionStorage.setItem(KEY_STORE, key);
  else sessionStorage.removeItem(KEY_STORE);
  $('key').value = '';
  $('key').placeholder = key ? '•••••• (set)' : 'none: read-only';
  $('key-state').textContent = key ? 'key set: writes enabled' : 'read-only';
  show($('key-forget'), !!key);
  show($('append-form'), !!key);
  show($('writes-locked'), !key);
  show($('banner'), false);
  document.body.dataset.key = key ? 'set' : 'none';
}

function setupKey() {
  $('key-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const key = $('key').value.trim();
    // A header value is Latin-1 without control bytes; anything else could never be sent.
    if (key && !/^[\x20-\x7e\xa0-\xff]+$/.test(key)) {
      $('key-state').textContent = 'a key must be printable ASCII';
      return;
    }
    if (!key) return;
    setKey(key);
    loadAll();
  });
  $('key-forget').addEventListener('click', () => {
    setKey('');
    loadAll();
  });
  setKey(state.key);
}

// ---------------------------------------------------------------- model cards

function modelFacts(m) {
  const facts = [];
  const a = m.architecture || {};
  const s = m.sizes || {};
  facts.push(['source', [m.source, m.source_detail].filter(Boolean).join(' — ')]);
  if (typeof m.architecture === 'string') {
    facts.push(['architecture', m.architecture]);
  } else if (m.architecture) {
    const shape = [
      s.layers != null ? `${s.layers} × ${a.block || '?'} blocks` : a.block,
      s.d != null ? `d=${s.d}` : null,
      s.heads != null ? `${s.heads} head${s.heads === 1 ? '' : 's'}` : null,
      s.ffn_dim != null ? `FFN ${s.ffn_dim}` : null,
      s.max_len != null ? `max_len ${s.max_len}` : null,
    ].filter(Boolean);
    facts.push(['architecture', shape.join(', ')]);
    const rest = ['attention', 'positions', 'readout', 'activation', 'padding']
      .filter((k) => a[k] != null)
      .map((k) => `${k} ${a[k]}`);
    if (rest.length) facts.push(['', rest.join(' · ')]);
  }
  if (m.catalog_size != null) facts.push(['catalog size', `${fmtInt.format(m.catalog_size)} items`, { field: 'catalog_size', value: m.catalog_size }]);
  if (m.score != null) facts.push(['score', String(m.score)]);
  if (m.rating_threshold != null) facts.push(['positives', `rating ≥ ${+Number(m.rating_threshold).toFixed(3)} (or no rating)`]);
  if (m.uses_time != null) {
    const time = m.uses_time ? `reads timestamps${m.uses_now ? ' and the request time (now)' : ''}` : 'timestamps only order the history';
    facts.push(['time', time]);
  }
  if (m.cpu_path != null) facts.push(['CPU path', String(m.cpu_path), { field: 'cpu_path', value: m.cpu_path }]);
  if (m.path != null) facts.push(['file', `${m.path}${m.format_version != null ? ` (format v${m.format_version})` : ''}`]);
  if (m.load_seconds != null) facts.push(['loaded in', fmtMs(Number(m.load_seconds))]);
  return facts;
}

function modelCard(m, { name, isDefault }) {
  const dl = el('dl', { class: 'kv' });
  for (const [k, v, data] of modelFacts(m)) {
    dl.append(el('dt', { text: k }), el('dd', { text: v, dataset: data ? { field: data.field, value: String(data.value) } : undefined }));
  }
  const card = el(
    'article',
    { class: 'card', dataset: { model: name || '', source: m.source || '' } },
    el('h3', {}, el('span', { text: name || basename(m.path) || 'model' }), m.source ? el('span', { class: 'badge', text: m.source }) : null,
      isDefault ? el('span', { class: 'badge', text: 'default' }) : null),
    dl,
  );
  if (m.spec && typeof m.spec === 'object') {
    const t = el('tbody');
    for (const [k, v] of Object.entries(m.spec)) t.append(el('tr', {}, el('th', { scope: 'row', text: k }), el('td', { text: String(v) })));
    card.append(el('details', {}, el('summary', { text: 'Full specification' }), el('div', { class: 'scroll' }, el('table', { class: 'compact' }, t))));
  }
  return card;
}

function renderModels() {
  const box = $('model-cards');
  box.replaceChildren();
  const m = state.model;
  const list = state.features.models ? state.models.models : null;
  if (list && list.length) {
    for (const entry of list) {
      // The default model is the one /model describes in full.
      const full = entry.default && m ? { ...entry, ...m } : entry;
      box.append(modelCard(full, { name: entry.name, isDefault: !!entry.default }));
    }
  } else if (m) {
    box.append(modelCard(m, { name: basename(m.path), isDefault: false }));
  }
  $('models-h').textContent = list && list.length > 1 ? `Models (${list.length})` : 'Model';

  // The split: any flat object, shown as it is.
  const split = state.features.models ? state.models.split : null;
  const splitList = $('split-list');
  splitList.replaceChildren();
  if (split && typeof split === 'object') {
    for (const [k, v] of Object.entries(split)) splitList.append(el('dt', { text: k }), el('dd', { text: typeof v === 'object' ? JSON.stringify(v) : String(v) }));
  }
  show($('split'), !!(split && typeof split === 'object' && Object.keys(split).length));

  // The try-it panel's model choice: only when there is a choice.
  const select = $('opt-model');
  select.replaceChildren();
  if (list && list.length > 1) {
    select.append(el('option', { value: '', text: 'default' }));
    for (const entry of list) select.append(el('option', { value: entry.name, text: entry.name + (entry.default ? ' (default)' : '') }));
  }
  show($('opt-model-wrap'), !!(list && list.length > 1));
  box.dataset.state = m ? 'ready' : 'error';
}

// ---------------------------------------------------------------- loading

async function loadAll() {
  const gen = ++state.generation;
  const box = $('model-cards');
  box.dataset.state = 'loading';
  const [model, models, users, items] = await Promise.all([
    api('GET', '/model'),
    api('GET', '/models'),
    api('GET', `/users?limit=${USERS_PAGE}`),
    api('GET', '/items?q=a&limit=1'),
  ]);
  if (gen !== state.generation) return;
  state.missing.clear();
  for (const [route, r] of [['/models', models], ['/users', users], ['/items', items]]) if (noRoute(r)) state.missing.add(route);
  document.body.dataset.missingRoutes = [...state.missing].join(' ');

  state.model = model.ok ? model.data : null;
  state.models = models.ok && Array.isArray(models.data?.models) ? models.data : null;
  state.features.models = !!state.models;
  state.features.users = users.ok && Array.isArray(users.data?.users);
  state.features.items = items.ok && Array.isArray(items.data?.items);
  renderModels();
  if (!model.ok) box.replaceChildren(el('p', { class: 'error', text: `GET /model: ${model.error}` }));

  // Features the server has (or not): hidden, never broken.
  show($('search'), state.features.items);
  show($('opt-filter'), state.features.items);
  show($('user-browser'), state.features.users);
  $('s-desc').textContent = describeStore(state.model?.history);
  $('user-options').replaceChildren();
  $('user-list').replaceChildren();
  if (state.features.users) {
    addUsers(users.data);
  } else {
    $('s-users').textContent = state.missing.has('/users')
      ? 'not listed by this server: type a user id in the try-it panel'
      : users.error || '–';
  }
  document.body.dataset.loaded = 'yes';
  refreshReady();
}

// "lmdb:PATH", "redis://HOST:PORT/DB", "memory": what kind of store, and where.
function describeStore(spec) {
  if (!spec) return '–';
  const s = String(spec);
  if (s.startsWith('lmdb:')) return `LMDB (embedded, durable) at ${s.slice(5)}`;
  if (s.startsWith('redis://')) return `Redis (shared by replicas) at ${s}`;
  if (s === 'memory') return 'in memory (gone when the server stops)';
  return s;
}

function addUsers(page) {
  // GET /users lists {user_id, interactions}; a plain id is taken too.
  const ids = page.users.map((u) => String(u && typeof u === 'object' ? u.user_id : u));
  const list = $('user-list');
  const options = $('user-options');
  for (const id of ids) {
    list.append(el('li', {}, el('button', { type: 'button', text: id, 'aria-label': `try user ${id}`, onclick: () => pickUser(id) })));
    options.append(el('option', { value: id }));
  }
  state.usersNext = page.next ?? null;
  const n = list.childElementCount;
  $('s-users').textContent = state.usersNext == null ? `${fmtInt.format(n)}` : `${fmtInt.format(n)} listed, more in the store`;
  show($('user-more'), state.usersNext != null);
}

async function moreUsers() {
  if (state.usersNext == null) return;
  const r = await api('GET', `/users?limit=${USERS_PAGE}&after=${encodeURIComponent(state.usersNext)}`);
  if (r.ok && Array.isArray(r.data?.users)) addUsers(r.data);
}

async function refreshReady() {
  const r = await api('GET', '/readyz');
  const pill = $('ready');
  if (r.ok) {
    pill.textContent = 'ready';
    pill.className = 'pill ok';
    $('s-state').textContent = `reachable · checked ${new Date().toLocaleTimeString()}`;
  } else {
    pill.textContent = r.status ? 'not ready' : 'unreachable';
    pill.className = 'pill bad';
    const history = r.data?.history;
    $('s-state').textContent = history ? String(history) : r.error || 'unknown';
  }
  pill.title = r.error || '';
}

// ---------------------------------------------------------------- live traffic

const charts = {
  rps: new Chart($('c-rps'), { title: 'Requests per second', series: [{ label: 'requests/s', color: '--series-a' }], format: fmtAxis }),
  lat: new Chart($('c-lat'), {
    title: 'Latency in milliseconds',
    series: [{ label: 'p50', color: '--series-a' }, { label: 'p99', color: '--series-b' }],
    format: fmtAxis,
  }),
  batch: new Chart($('c-batch'), { title: 'Mean batch size', series: [{ label: 'requests per pass', color: '--series-a' }], format: fmtAxis }),
  queue: new Chart($('c-queue'), { title: 'Queue depth', series: [{ label: 'queued', color: '--series-a' }], format: fmtAxis }),
};
const series = { rps: [], lat: { recommend: [], api: [] }, batch: [], queue: [] };
let lastScrape = null;

function keepRecent(points, t) {
  while (points.length && points[0].t < t - HISTORY_S - 4) points.shift();
  return points;
}

async function scrape() {
  const r = await api('GET', '/metrics');
  const err = $('metrics-error');
  if (!r.ok) {
    err.textContent = `GET /metrics: ${r.error}`;
    show(err, true);
    lastScrape = null;
    return;
  }
  show(err, false);
  const cur = snapshot(parse(r.text), performance.now() / 1000);
  if (cur.conns != null) $('t-conns').textContent = fmtInt.format(cur.conns);
  if (cur.queue != null) $('t-queue').textContent = fmtInt.format(cur.queue);
  const prev = lastScrape;
  lastScrape = cur;
  if (!prev) return;

  const t = cur.t;
  const rates = routeRates(prev, cur);
  let rps = 0;
  for (const [route, e] of rates) if (!NOT_API.has(route)) rps += e.rate;
  const quantiles = (keep) => {
    const b = latencyDelta(prev, cur, keep);
    const p50 = quantile(0.5, b);
    const p99 = quantile(0.99, b);
    return [p50 == null ? null : p50 * 1000, p99 == null ? null : p99 * 1000];
  };
  const lat = { recommend: quantiles((r) => RECOMMEND_ROUTES.has(r)), api: quantiles((r) => !NOT_API.has(r)) };
  const batch = meanBatch(prev, cur);

  series.rps.push({ t, v: [rps] });
  for (const k of Object.keys(lat)) keepRecent(series.lat[k], t).push({ t, v: lat[k] });
  series.batch.push({ t, v: [batch] });
  series.queue.push({ t, v: [cur.queue] });
  for (const s of [series.rps, series.batch, series.queue]) keepRecent(s, t);
  drawTraffic();

  $('t-rps').textContent = fmtRate(rps);
  $('t-batch').textContent = batch == null ? '–' : batch.toFixed(1);
  renderRouteTable(rates);
  $('traffic').dataset.scrapes = String(series.rps.length);
}

function drawTraffic() {
  const which = $('latency-route').value;
  const lat = series.lat[which];
  const last = lat.length ? lat[lat.length - 1].v : [null, null];
  $('t-p50').textContent = last[0] == null ? '–' : fmtMs(last[0] / 1000);
  $('t-p99').textContent = last[1] == null ? '–' : fmtMs(last[1] / 1000);
  charts.rps.setPoints(series.rps);
  charts.lat.setPoints(lat);
  charts.batch.setPoints(series.batch);
  charts.queue.setPoints(series.queue);
}

function renderRouteTable(rates) {
  const body = $('route-table').tBodies[0];
  body.replaceChildren();
  const routes = [...rates.keys()].sort();
  for (const route of routes) {
    const e = rates.get(route);
    body.append(
      el('tr', {},
        el('td', { class: 'id', text: route }),
        el('td', { class: 'num', text: fmtInt.format(e.total) }),
        el('td', { class: 'num', text: fmtInt.format(e.errors) }),
        el('td', { class: 'num', text: fmtRate(e.rate) })),
    );
  }
}

function startPolling() {
  const metricsLoop = async () => {
    await scrape();
    setTimeout(metricsLoop, METRICS_EVERY_MS);
  };
  metricsLoop();
  setInterval(refreshReady, READY_EVERY_MS);
  $('latency-route').addEventListener('change', drawTraffic);
}

// ---------------------------------------------------------------- try it: histories

function mode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

function setMode(m) {
  document.querySelector(`input[name="mode"][value="${m}"]`).checked = true;
  show($('mode-user'), m === 'user');
  show($('mode-typed'), m === 'typed');
}

function titleOf(id) {
  return state.titles.get(String(id))?.title ?? '';
}

function learnItem(item) {
  const id = item.item_id ?? item.id;
  if (id == null || (item.title == null && item.tags == null)) return;
  state.titles.set(String(id), { title: item.title ?? '', tags: Array.isArray(item.tags) ? item.tags : [] });
}

async function pickUser(id) {
  setMode('user');
  $('user-id').value = id;
  $('ap-user').value = id;
  await loadUserHistory();
  $('user-id').focus();
}

async function loadUserHistory() {
  const id = $('user-id').value.trim();
  const box = $('user-history');
  state.userHistory = null;
  state.userHistoryId = id;
  $('user-copy').disabled = true;
  if (!id) {
    box.replaceChildren();
    return;
  }
  box.replaceChildren(el('span', { class: 'muted', text: 'loading…' }));
  const r = await api('GET', `/users/${encodeURIComponent(id)}/interactions`);
  if ($('user-id').value.trim() !== id) return;
  if (!r.ok) {
    box.replaceChildren(el('p', { class: 'note bad', text: r.error }));
    return;
  }
  const items = Array.isArray(r.data?.interactions) ? r.data.interactions : [];
  state.userHistory = items;
  $('user-copy').disabled = !items.length;
  if (!items.length) {
    box.replaceChildren(el('p', { class: 'muted', text: `User ${id} has no stored interactions: the answer is the cold start.` }));
    return;
  }
  const SHOW = 25;
  const tail = items.slice(-SHOW);
  const ol = el('ol', { start: String(items.length - tail.length + 1) });
  for (const it of tail) {
    const parts = [fmtTime(it.timestamp), it.rating != null ? `rating ${it.rating}` : null].filter(Boolean).join(' · ');
    const title = titleOf(it.item_id);
    ol.append(el('li', {}, el('code', { text: String(it.item_id) }), title ? ` ${title}` : '', parts ? el('span', { class: 'muted', text: ` · ${parts}` }) : ''));
  }
  box.replaceChildren(
    el('span', { class: 'muted', text: `${fmtInt.format(items.length)} interactions, oldest first${items.length > SHOW ? ` (the last ${SHOW} shown)` : ''}; dates in UTC:` }),
    ol,
  );
}

function addTyped(ids) {
  const usesTime = !!state.model?.uses_time;
  for (const id of ids) {
    let timestamp = '';
    if (usesTime) {
      const last = state.typed.length ? Number(state.typed[state.typed.length - 1].timestamp) : NaN;
      timestamp = String(Number.isFinite(last) && last > 0 ? last + 60 : nowSeconds() - 3600);
    }
    state.typed.push({ item_id: String(id), rating: '', timestamp });
  }
  renderTyped();
}

function renderTyped() {
  const body = $('typed-table').tBodies[0];
  body.replaceChildren();
  state.typed.forEach((row, i) => {
    const rating = el('input', { type: 'number', step: '0.5', value: row.rating, 'aria-label': `rating of item ${row.item_id}`, placeholder: '–' });
    rating.addEventListener('input', () => { row.rating = rating.value; });
    const ts = el('input', { type: 'number', value: row.timestamp, 'aria-label': `timestamp of item ${row.item_id}`, placeholder: '–' });
    ts.addEventListener('input', () => { row.timestamp = ts.value; });
    const remove = el('button', { type: 'button', class: 'quiet', text: '×', 'aria-label': `remove item ${row.item_id}` });
    remove.addEventListener('click', () => {
      state.typed.splice(i, 1);
      renderTyped();
    });
    body.append(el('tr', { dataset: { id: row.item_id } },
      el('td', { class: 'num', text: String(i + 1) }),
      el('td', { class: 'id', text: row.item_id }),
      el('td', { text: titleOf(row.item_id) }),
      el('td', {}, rating), el('td', {}, ts), el('td', {}, remove)));
  });
  show($('typed-empty'), !state.typed.length);
  show($('typed-table'), !!state.typed.length);
}

let searchSeq = 0;
let searchTimer = null;

function onSearchInput() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(runSearch, 250);
}

async function runSearch() {
  const q = $('search-q').value.trim();
  const seq = ++searchSeq;
  const list = $('search-results');
  if (!q) {
    list.replaceChildren();
    return;
  }
  const r = await api('GET', `/items?q=${encodeURIComponent(q)}&limit=10`);
  if (seq !== searchSeq) return;
  list.replaceChildren();
  if (!r.ok) {
    list.append(el('li', { class: 'error', text: r.error }));
    return;
  }
  const items = Array.isArray(r.data?.items) ? r.data.items : [];
  if (!items.length) list.append(el('li', { class: 'muted', text: 'no title matches' }));
  for (const found of items) {
    // GET /items answers {"id", "title", "tags", ...}.
    const item = { ...found, item_id: found.id ?? found.item_id };
    learnItem(item);
    const tags = Array.isArray(item.tags) && item.tags.length ? item.tags.join(', ') : '';
    list.append(el('li', {}, el('button', {
      type: 'button',
      onclick: () => { addTyped([String(item.item_id)]); $('search-q').focus(); },
    }, el('strong', { text: item.title ?? String(item.item_id) }), ' ', el('code', { text: String(item.item_id) }), tags ? el('span', { class: 'tags', text: ` · ${tags}` }) : '')));
  }
}

// ---------------------------------------------------------------- try it: the request

function buildBody() {
  const body = {};
  if (mode() === 'user') {
    const id = $('user-id').value.trim();
    if (!id) throw new Error('Type a user id (or pick one from the store).');
    body.user_id = id;
  } else {
    body.user_interactions = state.typed.map((row) => {
      const o = { item_id: row.item_id };
      if (String(row.timestamp).trim() !== '') {
        const t = Number(row.timestamp);
        if (!Number.isInteger(t)) throw new Error(`The timestamp of item ${row.item_id} must be an integer.`);
        o.timestamp = t;
      }
      if (String(row.rating).trim() !== '') {
        const v = Number(row.rating);
        if (!Number.isFinite(v)) throw new Error(`The rating of item ${row.item_id} must be a number.`);
        o.rating = v;
      }
      return o;
    });
  }
  const k = Number($('opt-k').value);
  if (!Number.isInteger(k) || k < 1 || k > 1000) throw new Error('k must be an integer from 1 to 1000.');
  body.k = k;
  body.recommend_seen = $('opt-seen').checked;
  const cand = splitIds($('opt-cand').value);
  if (cand.length) body.candidate_ids = cand;
  const excl = splitIds($('opt-excl').value);
  if (excl.length) body.exclude_ids = excl;
  if (state.features.items) {
    const filter = {};
    for (const [name, id] of [['tags_any', 'opt-any'], ['tags_all', 'opt-all'], ['tags_none', 'opt-none']]) {
      const tags = splitTags($(id).value);
      if (tags.length) filter[name] = tags;
    }
    if (Object.keys(filter).length) body.filter = filter;
    body.fields = ['title', 'tags'];
  }
  const model = $('opt-model').value;
  if (state.features.models && model) body.model = model;
  return body;
}

function shellQuote(s) {
  return `'${s.replace(/'/g, "'\\''")}'`;
}

async function recommend(ev) {
  ev.preventDefault();
  const status = $('try-status');
  const result = $('result');
  let body;
  try {
    body = buildBody();
  } catch (e) {
    status.textContent = e.message;
    return;
  }
  $('go').disabled = true;
  status.textContent = 'asking…';
  result.dataset.state = 'pending';
  const r = await api('POST', '/recommend', body);
  $('go').disabled = false;
  result.dataset.seq = String(Number(result.dataset.seq || 0) + 1);
  show(result, true);
  const json = JSON.stringify(body);
  $('result-request').textContent =
    `POST /recommend\n${JSON.stringify(body, null, 2)}\n\n` +
    `curl -s ${location.origin}/recommend -H 'Content-Type: application/json'` +
    `${state.key ? ' -H "Authorization: Bearer $SEQREC_KEY"' : ''} -d ${shellQuote(json)}`;
  const message = $('result-message');
  const tbody = $('result-table').tBodies[0];
  tbody.replaceChildren();
  if (!r.ok) {
    message.textContent = r.error;
    message.className = 'note bad';
    show(message, true);
    status.textContent = '';
    result.dataset.state = 'error';
    return;
  }
  const recs = Array.isArray(r.data?.recommendations) ? r.data.recommendations : [];
  for (const rec of recs) learnItem(rec);
  const hasMeta = recs.some((rec) => rec.title != null || rec.tags != null) || recs.some((rec) => state.titles.has(String(rec.id)));
  for (const th of $('result-table').querySelectorAll('.col-title, .col-tags')) show(th, hasMeta);
  const scores = recs.map((rec) => Number(rec.score)).filter(Number.isFinite);
  const hi = Math.max(...scores, 0);
  const lo = Math.min(...scores, 0);
  const sigmoid = state.model?.score === 'sigmoid';
  recs.forEach((rec, i) => {
    const id = String(rec.id);
    const known = state.titles.get(id);
    const title = rec.title ?? known?.title ?? '';
    const tags = Array.isArray(rec.tags) ? rec.tags : known?.tags ?? [];
    const score = Number(rec.score);
    const frac = !Number.isFinite(score) ? 0 : sigmoid ? Math.min(1, Math.max(0, score)) : hi > lo ? (score - lo) / (hi - lo) : 1;
    const titleCell = el('td', { class: 'col-title', text: title });
    const tagsCell = el('td', { class: 'col-tags tags', text: tags.join(', ') });
    show(titleCell, hasMeta);
    show(tagsCell, hasMeta);
    tbody.append(el('tr', { dataset: { id } },
      el('td', { class: 'num', text: String(i + 1) }),
      el('td', { class: 'id', text: id }),
      titleCell, tagsCell,
      el('td', {}, el('span', { class: 'score' },
        el('span', { class: 'bar-box', 'aria-hidden': 'true' }, el('span', { class: 'bar', style: `width:${(frac * 100).toFixed(1)}%` })),
        Number.isFinite(score) ? score.toFixed(4) : String(rec.score)))));
  });
  const note = r.data?.message;
  message.textContent = note ? String(note) : '';
  message.className = 'note';
  show(message, !!note);
  const answeredBy = r.headers?.get('X-Seqrec-Model');
  status.textContent = `${recs.length} item${recs.length === 1 ? '' : 's'} in ${r.ms.toFixed(1)} ms${answeredBy ? ` · model ${answeredBy}` : ''}`;
  result.dataset.state = 'done';
  if (mode() === 'user' && state.userHistoryId !== body.user_id) loadUserHistory();
}

// ---------------------------------------------------------------- writes (with a key only)

async function append(ev) {
  ev.preventDefault();
  const status = $('ap-status');
  const user = $('ap-user').value.trim();
  const item = $('ap-item').value.trim();
  if (!user || !item) {
    status.textContent = 'A user id and an item id are needed.';
    return;
  }
  const interaction = { item_id: item };
  const ts = $('ap-ts').value.trim();
  interaction.timestamp = ts === '' ? nowSeconds() : Number(ts);
  if (!Number.isInteger(interaction.timestamp)) {
    status.textContent = 'The timestamp must be an integer.';
    return;
  }
  const rating = $('ap-rating').value.trim();
  if (rating !== '') interaction.rating = Number(rating);
  $('ap-go').disabled = true;
  status.textContent = 'appending…';
  const r = await api('POST', `/users/${encodeURIComponent(user)}/interactions`, { user_interactions: [interaction] });
  $('ap-go').disabled = false;
  status.dataset.state = r.ok ? 'done' : 'error';
  status.textContent = r.ok ? `appended ${r.data?.appended ?? 1} interaction to user ${r.data?.user_id ?? user}` : r.error;
  status.className = r.ok ? 'muted' : 'error';
  if (r.ok && mode() === 'user' && $('user-id').value.trim() === user) loadUserHistory();
}

// ---------------------------------------------------------------- wiring

function setupTry() {
  for (const radio of document.querySelectorAll('input[name="mode"]')) radio.addEventListener('change', () => setMode(mode()));
  $('user-load').addEventListener('click', loadUserHistory);
  // History loads on demand (and with each recommendation), never on blur: a list appearing
  // between a press and a release would move the button being clicked.
  $('user-id').addEventListener('input', () => {
    $('ap-user').value = $('user-id').value.trim();
  });
  $('user-copy').addEventListener('click', () => {
    if (!state.userHistory) return;
    state.typed = state.userHistory.map((it) => ({
      item_id: String(it.item_id),
      rating: it.rating == null ? '' : String(it.rating),
      timestamp: it.timestamp == null ? '' : String(it.timestamp),
    }));
    setMode('typed');
    renderTyped();
  });
  const addFromBox = () => {
    const ids = splitIds($('add-ids').value);
    if (ids.length) addTyped(ids);
    $('add-ids').value = '';
  };
  $('add-btn').addEventListener('click', addFromBox);
  $('add-ids').addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter') {
      ev.preventDefault();
      addFromBox();
    }
  });
  $('clear-btn').addEventListener('click', () => {
    state.typed = [];
    renderTyped();
  });
  $('search-q').addEventListener('input', onSearchInput);
  $('user-more').addEventListener('click', moreUsers);
  $('try-form').addEventListener('submit', recommend);
  $('append-form').addEventListener('submit', append);
  setMode(mode());
  renderTyped();
}

setupKey();
setupTry();
loadAll();
startPolling();

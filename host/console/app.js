// bourse web console: plain JS over the management HTTP API (/api/...), no framework, no
// build step. Every page is a render function that builds its forms once and returns a
// refresh function; the router polls the current page's refresh every POLL_MS. Names from the
// broker (queues, exchanges, users...) are attacker-controlled: they only ever reach the page
// through textContent and attributes, never innerHTML.
'use strict';

const POLL_MS = 2000;
const CHART_POINTS = 60;
const AUTH_KEY = 'bourse.auth';
const BUILTIN_TYPES = ['direct', 'fanout', 'topic', 'headers'];

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;

// ---------------------------------------------------------------------------------------------
// DOM helpers

/** createElement with attributes (`on*` become listeners) and children (strings -> text). */
function h(tag, attrs = {}, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  el.append(...kids.flat().filter((k) => k != null && k !== false));
  return el;
}

/** A labelled form control. */
function field(label, control, cls) {
  return h('label', { class: cls }, label, control);
}

function checkbox(id, label, checked) {
  return field(h('input', { id, type: 'checkbox', checked }), label, 'check');
}

/** A form whose submit runs `action(form)` through `act` (status line, refresh). */
function form(id, title, controls, submitLabel, action) {
  return h('form', {
    id, class: 'inline', 'data-testid': id,
    onsubmit: (e) => { e.preventDefault(); act(title, () => action(e.target)); },
  }, ...controls, h('button', { id: id.replace(/-form$/, '') + '-submit', type: 'submit' }, submitLabel));
}

function button(label, action, attrs = {}) {
  return h('button', { type: 'button', ...attrs, onclick: action }, label);
}

/** `obj.a.b.c` or undefined. */
function dig(obj, path) {
  return path.split('.').reduce((o, k) => (o == null ? undefined : o[k]), obj);
}

const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);
const fmtInt = (v) => (num(v) === undefined ? '–' : v.toLocaleString('en'));
const fmtRate = (v) => (num(v) === undefined ? '–' : (v >= 100 ? v.toFixed(0) : v.toFixed(1)) + '/s');
const fmtBool = (v) => (v === undefined ? '–' : v ? 'yes' : 'no');
const fmtText = (v) => (v == null || v === '' ? '–' : String(v));
const rate = (path) => (r) => num(dig(r, path + '.rate'));

function fmtBytes(v) {
  if (num(v) === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i ? v.toFixed(1) : String(v)) + ' ' + units[i];
}

/** Tags as RabbitMQ 3.x (comma-separated string) or 4.x (list) write them. */
const tagList = (t) => (Array.isArray(t) ? t.join(', ') : fmtText(t));

/**
 * A table kept in place across refreshes: rows are matched by `key(row)`; a text cell is
 * updated only when its text changes, and `make` cells (links, buttons) are built once per
 * row, so a poll never replaces a button under the pointer. Columns:
 * `{ id, title, get(row), fmt?, num?, pre?, wide?, make?(row) }`; each td has `data-col` = id, and
 * `data-value` = the raw value of a `get` column.
 */
function table(id, columns, empty = 'none') {
  const tbody = h('tbody');
  const el = h('table', { id, 'data-testid': id },
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { class: c.num ? 'num' : null }, c.title)))),
    tbody);
  const rows = new Map();
  const wrap = h('div', { class: 'scroll' }, el); // wide tables scroll, the page does not
  wrap.update = (list, key, attrs) => {
    const seen = new Set();
    let prev = null;
    if (list.length) tbody.querySelector('tr.none')?.remove();
    for (const row of list) {
      const k = key(row);
      if (seen.has(k)) continue;
      seen.add(k);
      let tr = rows.get(k);
      if (!tr) {
        tr = h('tr', attrs(row), columns.map((c) => h('td', {
          'data-col': c.id, class: [c.num && 'num', c.pre && 'pre', c.wide && 'wide'].filter(Boolean).join(' ') || null,
        }, c.make ? c.make(row) : null)));
        rows.set(k, tr);
      }
      const next = prev ? prev.nextSibling : tbody.firstChild;
      if (next !== tr) tbody.insertBefore(tr, next); // list order, moving only what moved
      prev = tr;
      columns.forEach((c, i) => {
        if (c.make) return;
        const td = tr.children[i];
        const value = c.get(row);
        const text = (c.fmt || fmtText)(value);
        if (td.textContent !== text) td.textContent = text;
        const raw = value == null ? '' : typeof value === 'object' ? JSON.stringify(value) : String(value);
        if (td.dataset.value !== raw) td.dataset.value = raw;
      });
    }
    for (const [k, tr] of rows) if (!seen.has(k)) { tr.remove(); rows.delete(k); }
    if (!rows.size && !tbody.querySelector('tr.none')) tbody.append(h('tr', { class: 'none' }, h('td', { class: 'empty', colspan: columns.length }, empty)));
  };
  return wrap;
}

/** A `<select>` of the vhosts the user sees, `/` first; filled asynchronously. */
function vhostSelect(id) {
  const select = h('select', { id, 'data-testid': id }, h('option', { value: '/' }, '/'));
  api('GET', '/api/vhosts').then((list) => {
    const current = select.value;
    select.replaceChildren(...list.map((v) => h('option', { value: v.name }, v.name)));
    select.value = list.some((v) => v.name === current) ? current : (list[0] || {}).name;
    select.dataset.loaded = 'true';
  }).catch((e) => say('Listing vhosts failed: ' + e.message, 'error'));
  return select;
}

// ---------------------------------------------------------------------------------------------
// The API: one fetch helper, basic auth from sessionStorage, errors as `ApiError`.

class ApiError extends Error {
  constructor(status, error, reason) {
    super(status ? `${status} ${reason || error || 'error'}` : reason);
    Object.assign(this, { status, error, reason });
  }
}

/** Raised after a 401 that means the credentials are no good: the login form is showing. */
class LoginNeeded extends Error {}

function basic(user, password) {
  const bytes = new TextEncoder().encode(user + ':' + password);
  return btoa(Array.from(bytes, (b) => String.fromCharCode(b)).join(''));
}

/**
 * `method path` with basic auth; `body` is JSON unless it is an ArrayBuffer or Blob (then
 * application/wasm). Answers the parsed JSON (or null); throws ApiError with the API's reason.
 * `credentials: 'omit'` keeps the browser from its own basic-auth prompt on a 401.
 */
async function api(method, path, body, headers = {}) {
  const auth = sessionStorage.getItem(AUTH_KEY);
  const hdrs = { Accept: 'application/json', ...headers };
  if (auth) hdrs.Authorization = 'Basic ' + auth;
  let payload;
  if (body instanceof ArrayBuffer || body instanceof Blob) {
    payload = body;
    hdrs['Content-Type'] = 'application/wasm';
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    hdrs['Content-Type'] = 'application/json';
  }
  let res;
  try {
    res = await fetch(path, { method, headers: hdrs, body: payload, credentials: 'omit', cache: 'no-store' });
  } catch (e) {
    throw new ApiError(0, 'network', `cannot reach the broker (${e.message})`);
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (res.ok) return data;
  const error = new ApiError(res.status, data && data.error, (data && data.reason) || (typeof data === 'string' && data) || res.statusText);
  // RabbitMQ answers 401 both to bad credentials and to a missing right; only the first
  // sends the user back to the login form.
  if (res.status === 401 && /^(Login failed|Not management user)/.test(error.reason || '')) {
    showLogin(error.reason);
    throw new LoginNeeded(error.reason);
  }
  throw error;
}

/** GET that answers null for a route the broker does not have (404), for optional panels. */
async function optional(path) {
  try {
    return await api('GET', path);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return null;
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// Status line and actions

let statusFromPoll = false;

function say(text, kind = 'ok', fromPoll = false) {
  const el = $('status');
  el.textContent = text ? `${new Date().toLocaleTimeString('en-GB')}  ${text}` : '';
  el.className = kind;
  el.dataset.kind = kind;
  statusFromPoll = fromPoll;
}

/** Runs a user action: its result (or the API's reason) in the status line, then a refresh. */
async function act(title, fn) {
  try {
    const message = await fn();
    say(message || `${title}: done`, 'ok');
  } catch (e) {
    if (!(e instanceof LoginNeeded)) say(`${title} failed: ${e.message}`, 'error');
    return;
  }
  refreshNow();
}

function confirmed(question) {
  return window.confirm(question);
}

/** A JSON object from a text field ("" -> {}), or a thrown error naming the field. */
function jsonField(input, name) {
  const text = input.value.trim();
  if (!text) return {};
  try {
    const v = JSON.parse(text);
    if (v && typeof v === 'object' && !Array.isArray(v)) return v;
  } catch { /* below */ }
  throw new Error(`${name} must be a JSON object`);
}

// ---------------------------------------------------------------------------------------------
// Login and routing

let generation = 0;
let current = null; // { refresh }

function showLogin(reason) {
  sessionStorage.removeItem(AUTH_KEY);
  generation++;
  current = null;
  $('app').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = reason || '';
  $('login-password').value = '';
  $('login-user').focus();
}

async function login(e) {
  e.preventDefault();
  const user = $('login-user').value;
  sessionStorage.setItem(AUTH_KEY, basic(user, $('login-password').value));
  $('login-error').textContent = '';
  try {
    await start();
  } catch (err) {
    if (!(err instanceof LoginNeeded)) {
      sessionStorage.removeItem(AUTH_KEY);
      $('login-error').textContent = err.message;
    }
  }
}

/** With stored credentials: who am I, then the page of the hash. */
async function start() {
  const me = await api('GET', '/api/whoami');
  $('whoami').textContent = `${me.name} (${tagList(me.tags)})`;
  const tags = Array.isArray(me.tags) ? me.tags : String(me.tags || '').split(',');
  seesNodes = tags.some((t) => ['administrator', 'monitoring'].includes(String(t).trim()));
  $('login').hidden = true;
  $('app').hidden = false;
  route();
}

const PAGES = {
  overview: renderOverview,
  queues: renderQueues,
  queue: renderQueue,
  exchanges: renderExchanges,
  connections: renderConnections,
  admin: renderAdmin,
  plugins: renderPlugins,
};

function route() {
  if ($('app').hidden) return;
  const parts = location.hash.replace(/^#\/?/, '').split('/');
  const name = PAGES[parts[0]] ? parts[0] : 'overview';
  let args;
  try { args = parts.slice(1).map(decodeURIComponent); } catch { args = []; }
  const gen = ++generation;
  for (const a of $('nav').children) a.classList.toggle('active', a.id === 'nav-' + (name === 'queue' ? 'queues' : name));
  const main = $('main');
  main.replaceChildren();
  main.dataset.page = name;
  current = { refresh: PAGES[name](main, ...args) };
  poll(gen);
}

async function poll(gen) {
  while (gen === generation) {
    await refreshNow();
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

/** One refresh of the current page; its failure goes to the status line. */
async function refreshNow() {
  const page = current;
  if (!page || !page.refresh) return;
  try {
    await page.refresh();
    if (statusFromPoll) say('', 'ok');
  } catch (e) {
    if (!(e instanceof LoginNeeded) && page === current) say(`Refresh failed: ${e.message}`, 'error', true);
  }
}

// ---------------------------------------------------------------------------------------------
// Overview: totals and the message-rate chart

const chartPoints = []; // { publish, deliver }, the last CHART_POINTS samples
let seesNodes = false; // /api/nodes is for monitoring and administrator users (as RabbitMQ)

function card(id, label) {
  return h('div', { class: 'card' }, h('span', { class: 'label' }, label),
    h('span', { class: 'value', id, 'data-testid': id }, '–'));
}

function setValue(id, value, fmt) {
  const el = $(id);
  if (!el) return;
  el.textContent = fmt(value);
  el.dataset.value = value == null ? '' : String(value);
}

function renderOverview(main) {
  const canvas = h('canvas', { id: 'rate-chart', 'data-testid': 'rate-chart', width: 900, height: 240 });
  main.append(
    h('h1', {}, 'Overview'),
    h('div', { class: 'cards', id: 'ov-totals' },
      card('ov-connections', 'Connections'), card('ov-channels', 'Channels'),
      card('ov-queues', 'Queues'), card('ov-exchanges', 'Exchanges'), card('ov-consumers', 'Consumers')),
    h('div', { class: 'cards', id: 'ov-messages-cards' },
      card('ov-messages', 'Messages'), card('ov-ready', 'Ready'), card('ov-unacked', 'Unacked')),
    h('div', { class: 'cards', id: 'ov-rates' },
      card('ov-publish-rate', 'Publish'), card('ov-deliver-rate', 'Deliver / get'),
      card('ov-ack-rate', 'Ack'), card('ov-redeliver-rate', 'Redeliver')),
    h('h2', {}, 'Message rates'),
    h('div', { class: 'legend', id: 'chart-legend' },
      h('span', { class: 'publish' }, 'publish'), h('span', { class: 'deliver' }, 'deliver / get')),
    canvas,
    h('p', { class: 'note', id: 'ov-node' }));
  // The nodes: one row on a single node; in a cluster every member, with its Raft role and
  // how far its replica is behind the leader's log (as the leader sees it).
  const nodes = table('nodes-table', [
    { id: 'name', title: 'Node', get: (n) => n.name },
    { id: 'running', title: 'Running', get: (n) => n.running, fmt: fmtBool },
    { id: 'role', title: 'Role', get: (n) => dig(n, 'cluster.role') },
    { id: 'leader', title: 'Leader', get: (n) => dig(n, 'cluster.leader'), fmt: fmtBool },
    { id: 'voter', title: 'Voter', get: (n) => dig(n, 'cluster.voter'), fmt: fmtBool },
    { id: 'term', title: 'Term', get: (n) => num(dig(n, 'cluster.term')), fmt: fmtInt, num: true },
    { id: 'applied', title: 'Applied index', get: (n) => num(dig(n, 'cluster.last_applied_index')), fmt: fmtInt, num: true },
    { id: 'lag', title: 'Replica lag', get: (n) => num(dig(n, 'cluster.lag')), fmt: fmtInt, num: true },
    { id: 'address', title: 'Cluster address', get: (n) => dig(n, 'cluster.address') },
  ], 'no nodes');
  if (seesNodes) main.append(h('h2', {}, 'Nodes'), nodes);
  drawChart(canvas);
  return async () => {
    if (seesNodes) {
      const list = await api('GET', '/api/nodes');
      nodes.update(Array.isArray(list) ? list : [], (n) => n.name, (n) => ({ 'data-name': n.name }));
    }
    const o = await api('GET', '/api/overview');
    const t = o.object_totals || {}, q = o.queue_totals || {};
    for (const k of ['connections', 'channels', 'queues', 'exchanges', 'consumers']) setValue('ov-' + k, num(t[k]), fmtInt);
    setValue('ov-messages', num(q.messages), fmtInt);
    setValue('ov-ready', num(q.messages_ready), fmtInt);
    setValue('ov-unacked', num(q.messages_unacknowledged), fmtInt);
    const r = (k) => num(dig(o, `message_stats.${k}_details.rate`));
    setValue('ov-publish-rate', r('publish'), fmtRate);
    setValue('ov-deliver-rate', r('deliver_get'), fmtRate);
    setValue('ov-ack-rate', r('ack'), fmtRate);
    setValue('ov-redeliver-rate', r('redeliver'), fmtRate);
    $('ov-node').textContent = `${fmtText(o.product_name)} ${fmtText(o.product_version)} on ${fmtText(o.node)}`;
    chartPoints.push({ publish: r('publish') || 0, deliver: r('deliver_get') || 0 });
    if (chartPoints.length > CHART_POINTS) chartPoints.splice(0, chartPoints.length - CHART_POINTS);
    drawChart(canvas);
  };
}

/** A round axis maximum at or above `v`: 1, 2, 5 x 10^n. */
function niceMax(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].map((m) => m * p).find((m) => m >= v);
}

function drawChart(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 900, ht = canvas.clientHeight || 240;
  if (canvas.width !== Math.round(w * dpr)) { canvas.width = Math.round(w * dpr); canvas.height = Math.round(ht * dpr); }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, ht);
  const pad = { l: 56, r: 12, t: 12, b: 24 };
  const pw = w - pad.l - pad.r, ph = ht - pad.t - pad.b;
  const max = niceMax(Math.max(1, ...chartPoints.map((p) => Math.max(p.publish, p.deliver))));
  ctx.font = '11px system-ui, sans-serif';
  ctx.fillStyle = '#5f6b76';
  ctx.strokeStyle = '#e3e6ea';
  ctx.lineWidth = 1;
  ctx.textAlign = 'right';
  ctx.textBaseline = 'middle';
  for (let i = 0; i <= 4; i++) {
    const y = pad.t + ph - (ph * i) / 4;
    ctx.beginPath(); ctx.moveTo(pad.l, y); ctx.lineTo(pad.l + pw, y); ctx.stroke();
    ctx.fillText(`${+((max * i) / 4).toPrecision(3)}/s`, pad.l - 6, y);
  }
  ctx.textBaseline = 'top';
  ctx.fillText('now', pad.l + pw, pad.t + ph + 6);
  ctx.textAlign = 'left';
  ctx.fillText(`${(CHART_POINTS * POLL_MS) / 1000} s ago`, pad.l, pad.t + ph + 6);
  const x = (i) => pad.l + (pw * (i + CHART_POINTS - chartPoints.length)) / (CHART_POINTS - 1);
  const y = (v) => pad.t + ph - (ph * v) / max;
  ctx.lineWidth = 2;
  for (const [key, color] of [['publish', '#2a7ab0'], ['deliver', '#d9822b']]) {
    ctx.strokeStyle = color;
    ctx.beginPath();
    chartPoints.forEach((p, i) => (i ? ctx.lineTo(x(i), y(p[key])) : ctx.moveTo(x(i), y(p[key]))));
    ctx.stroke();
  }
  canvas.dataset.points = String(chartPoints.length);
  canvas.dataset.max = String(max);
}

// ---------------------------------------------------------------------------------------------
// Queues and one queue

const queueHref = (vhost, name) => `#/queue/${enc(vhost)}/${enc(name)}`;
const queuePath = (vhost, name) => `/api/queues/${enc(vhost)}/${enc(name)}`;

function deleteQueue(vhost, name, then) {
  if (!confirmed(`Delete queue ${name} in ${vhost} and its messages?`)) return;
  act(`Delete queue ${name}`, async () => {
    await api('DELETE', queuePath(vhost, name));
    if (then) then();
    return `Deleted queue ${name}`;
  });
}

function renderQueues(main) {
  const name = h('input', { id: 'q-declare-name', required: true, placeholder: 'name' });
  const args = h('input', { id: 'q-declare-arguments', placeholder: '{"x-max-length": 1000}' });
  const vhost = vhostSelect('q-declare-vhost');
  const list = table('queues-table', [
    { id: 'vhost', title: 'Vhost', get: (q) => q.vhost },
    { id: 'name', title: 'Name', make: (q) => h('a', { href: queueHref(q.vhost, q.name) }, q.name) },
    { id: 'type', title: 'Type', get: (q) => [q.type || 'classic', q.durable ? 'durable' : 'transient'].join(', ') },
    { id: 'state', title: 'State', get: (q) => q.state },
    { id: 'ready', title: 'Ready', get: (q) => num(q.messages_ready), fmt: fmtInt, num: true },
    { id: 'unacked', title: 'Unacked', get: (q) => num(q.messages_unacknowledged), fmt: fmtInt, num: true },
    { id: 'messages', title: 'Total', get: (q) => num(q.messages), fmt: fmtInt, num: true },
    { id: 'consumers', title: 'Consumers', get: (q) => num(q.consumers), fmt: fmtInt, num: true },
    { id: 'publish', title: 'Publish', get: rate('message_stats.publish_details'), fmt: fmtRate, num: true },
    { id: 'deliver', title: 'Deliver / get', get: rate('message_stats.deliver_get_details'), fmt: fmtRate, num: true },
    { id: 'actions', title: '', make: (q) => button('Delete', () => deleteQueue(q.vhost, q.name), { class: 'danger', 'data-action': 'delete' }) },
  ]);
  main.append(
    h('h1', {}, 'Queues'),
    form('q-declare-form', 'Declare queue', [
      field('Vhost', vhost), field('Name', name),
      checkbox('q-declare-durable', 'durable', true), checkbox('q-declare-auto-delete', 'auto-delete', false),
      field('Arguments (JSON)', args),
    ], 'Declare queue', async () => {
      const body = {
        durable: $('q-declare-durable').checked, auto_delete: $('q-declare-auto-delete').checked,
        arguments: jsonField(args, 'arguments'),
      };
      await api('PUT', queuePath(vhost.value, name.value), body);
      return `Declared queue ${name.value} in ${vhost.value}`;
    }),
    list);
  return async () => {
    const queues = await api('GET', '/api/queues');
    list.update(queues, (q) => q.vhost + '\u0000' + q.name, (q) => ({ 'data-vhost': q.vhost, 'data-name': q.name }));
  };
}

function fact(id, label) {
  return [h('dt', {}, label), h('dd', { id, 'data-testid': id }, '–')];
}

function renderQueue(main, vhost = '/', name = '') {
  const count = h('input', { id: 'q-get-count', type: 'number', min: 1, max: 1000, value: 1 });
  const ackmode = h('select', { id: 'q-get-ackmode' },
    h('option', { value: 'ack_requeue_true' }, 'requeue (nack, requeue true)'),
    h('option', { value: 'ack_requeue_false' }, 'remove (ack)'));
  const results = h('div', { id: 'q-get-results', 'data-testid': 'q-get-results' });
  main.append(
    h('p', {}, h('a', { href: '#/queues' }, '← Queues')),
    h('h1', { id: 'q-title' }, `Queue ${name}`),
    h('p', { class: 'note' }, `in vhost ${vhost}`),
    h('dl', { class: 'facts' },
      fact('q-type', 'Type'), fact('q-state', 'State'), fact('q-messages', 'Messages'),
      fact('q-ready', 'Ready'), fact('q-unacked', 'Unacked'), fact('q-consumers', 'Consumers'),
      fact('q-bytes', 'Body bytes'), fact('q-publish-rate', 'Publish'), fact('q-deliver-rate', 'Deliver / get'),
      fact('q-arguments', 'Arguments')),
    h('p', {},
      button('Purge', () => {
        if (!confirmed(`Purge every ready message of ${name}?`)) return;
        act('Purge', async () => { await api('DELETE', queuePath(vhost, name) + '/contents'); return `Purged ${name}`; });
      }, { id: 'q-purge' }),
      button('Delete queue', () => deleteQueue(vhost, name, () => { location.hash = '#/queues'; }), { id: 'q-delete', class: 'danger' })),
    h('h2', {}, 'Get messages'),
    form('q-get-form', 'Get messages', [field('Count', count), field('Ack mode', ackmode)], 'Get messages', async () => {
      const body = { count: Number(count.value) || 1, ackmode: ackmode.value, encoding: 'auto', truncate: 50000 };
      const messages = await api('POST', queuePath(vhost, name) + '/get', body);
      showMessages(results, Array.isArray(messages) ? messages : []);
      return `Got ${results.children.length} message(s) from ${name}`;
    }),
    results);
  return async () => {
    const q = await api('GET', queuePath(vhost, name));
    setValue('q-type', [q.type || 'classic', q.durable ? 'durable' : 'transient', q.auto_delete ? 'auto-delete' : null, q.exclusive ? 'exclusive' : null].filter(Boolean).join(', '), fmtText);
    setValue('q-state', q.state, fmtText);
    setValue('q-messages', num(q.messages), fmtInt);
    setValue('q-ready', num(q.messages_ready), fmtInt);
    setValue('q-unacked', num(q.messages_unacknowledged), fmtInt);
    setValue('q-consumers', num(q.consumers), fmtInt);
    setValue('q-bytes', num(q.message_bytes), fmtBytes);
    setValue('q-publish-rate', rate('message_stats.publish_details')(q), fmtRate);
    setValue('q-deliver-rate', rate('message_stats.deliver_get_details')(q), fmtRate);
    setValue('q-arguments', JSON.stringify(q.arguments || {}), fmtText);
  };
}

function showMessages(box, messages) {
  box.replaceChildren(...messages.map((m, i) => h('div', { class: 'message', 'data-index': i },
    h('div', { class: 'meta' },
      `#${i + 1}  exchange ${m.exchange === '' ? '(default)' : fmtText(m.exchange)}  routing key ${fmtText(m.routing_key)}`
      + `  redelivered ${fmtBool(m.redelivered)}  ${fmtInt(num(m.message_count))} left  ${fmtInt(num(m.payload_bytes))} bytes`
      + `  encoding ${fmtText(m.payload_encoding)}`),
    h('pre', { class: 'payload' }, m.payload == null ? '' : String(m.payload)),
    h('pre', { class: 'properties' }, 'properties ' + JSON.stringify(m.properties || {})))));
  if (!messages.length) box.append(h('p', { class: 'note' }, 'The queue is empty.'));
}

// ---------------------------------------------------------------------------------------------
// Exchanges: list with their plugin, declare, bind, publish

const exchangePath = (vhost, name) => `/api/exchanges/${enc(vhost)}/${enc(name || 'amq.default')}`;

/** The plugin (and version) an exchange runs: its entry in a plugin's `exchanges`, else the
 *  plugin of its type in its vhost or the broker's. */
function pluginOf(x, plugins) {
  for (const p of plugins) {
    const e = (p.exchanges || []).find((e) => e.vhost === x.vhost && e.name === x.name);
    if (e) return `${p.name} ${fmtText(e.plugin_version || dig(p, 'current.version'))}`;
  }
  if (BUILTIN_TYPES.includes(x.type)) return null;
  const p = plugins.find((p) => p.name === x.type && p.scope === x.vhost) || plugins.find((p) => p.name === x.type && p.scope === 'broker');
  return p ? `${p.name} ${fmtText(dig(p, 'current.version'))}` : null;
}

function renderExchanges(main) {
  const types = h('datalist', { id: 'x-types' }, BUILTIN_TYPES.map((t) => h('option', { value: t })));
  const dName = h('input', { id: 'x-declare-name', required: true, placeholder: 'name' });
  const dType = h('input', { id: 'x-declare-type', list: 'x-types', required: true, value: 'direct' });
  const dVhost = vhostSelect('x-declare-vhost');
  const bVhost = vhostSelect('bind-vhost');
  const bSource = h('input', { id: 'bind-exchange', required: true, placeholder: 'exchange' });
  const bKind = h('select', { id: 'bind-dest-type' }, h('option', { value: 'q' }, 'queue'), h('option', { value: 'e' }, 'exchange'));
  const bDest = h('input', { id: 'bind-queue', required: true, placeholder: 'queue' });
  const bKey = h('input', { id: 'bind-key', placeholder: 'routing key' });
  const pVhost = vhostSelect('publish-vhost');
  const pExchange = h('input', { id: 'publish-exchange', placeholder: '(default exchange)' });
  const pKey = h('input', { id: 'publish-key', placeholder: 'routing key' });
  const pPayload = h('textarea', { id: 'publish-payload', placeholder: 'payload' });
  const pProps = h('input', { id: 'publish-properties', placeholder: '{"delivery_mode": 2}' });
  const published = h('p', { id: 'publish-result', class: 'result', 'data-testid': 'publish-result' });
  const list = table('exchanges-table', [
    { id: 'vhost', title: 'Vhost', get: (x) => x.vhost },
    { id: 'name', title: 'Name', get: (x) => (x.name === '' ? '(AMQP default)' : x.name) },
    { id: 'type', title: 'Type', get: (x) => x.type },
    { id: 'durable', title: 'Durable', get: (x) => x.durable, fmt: fmtBool },
    { id: 'plugin', title: 'Plugin', get: (x) => x.plugin },
    { id: 'publish_in', title: 'In', get: rate('message_stats.publish_in_details'), fmt: fmtRate, num: true },
    { id: 'publish_out', title: 'Out', get: rate('message_stats.publish_out_details'), fmt: fmtRate, num: true },
    { id: 'actions', title: '', make: (x) => (x.name === '' || x.name.startsWith('amq.') ? null
      : button('Delete', () => {
        if (!confirmed(`Delete exchange ${x.name} in ${x.vhost}?`)) return;
        act(`Delete exchange ${x.name}`, async () => { await api('DELETE', exchangePath(x.vhost, x.name)); });
      }, { class: 'danger', 'data-action': 'delete' })) },
  ]);
  main.append(
    h('h1', {}, 'Exchanges'), types,
    form('x-declare-form', 'Declare exchange', [
      field('Vhost', dVhost), field('Name', dName), field('Type', dType), checkbox('x-declare-durable', 'durable', true),
    ], 'Declare exchange', async () => {
      await api('PUT', exchangePath(dVhost.value, dName.value), { type: dType.value, durable: $('x-declare-durable').checked });
      return `Declared exchange ${dName.value} of type ${dType.value}`;
    }),
    form('bind-form', 'Bind', [
      field('Vhost', bVhost), field('From exchange', bSource), field('To', bKind), field('Destination', bDest), field('Routing key', bKey),
    ], 'Bind', async () => {
      await api('POST', `/api/bindings/${enc(bVhost.value)}/e/${enc(bSource.value)}/${bKind.value}/${enc(bDest.value)}`,
        { routing_key: bKey.value, arguments: {} });
      return `Bound ${bDest.value} to ${bSource.value} with key ${bKey.value}`;
    }),
    form('publish-form', 'Publish', [
      field('Vhost', pVhost), field('Exchange', pExchange), field('Routing key', pKey), field('Payload', pPayload),
      field('Properties (JSON)', pProps),
    ], 'Publish', async () => {
      published.textContent = '';
      const body = { properties: jsonField(pProps, 'properties'), routing_key: pKey.value, payload: pPayload.value, payload_encoding: 'string' };
      const answer = await api('POST', exchangePath(pVhost.value, pExchange.value) + '/publish', body);
      published.textContent = `routed: ${answer && answer.routed}`;
      published.dataset.routed = String(answer && answer.routed);
      return `Published to ${pExchange.value || '(default exchange)'}: ${answer && answer.routed ? 'routed' : 'not routed'}`;
    }),
    published,
    list);
  return async () => {
    const [exchanges, plugins] = await Promise.all([api('GET', '/api/exchanges'), optional('/api/plugins')]);
    const known = new Set([...BUILTIN_TYPES, ...(plugins || []).map((p) => p.name)]);
    if (types.children.length !== known.size) types.replaceChildren(...[...known].map((t) => h('option', { value: t })));
    for (const x of exchanges) x.plugin = pluginOf(x, plugins || []);
    list.update(exchanges, (x) => x.vhost + '\u0000' + x.name, (x) => ({ 'data-vhost': x.vhost, 'data-name': x.name }));
  };
}

// ---------------------------------------------------------------------------------------------
// Connections and channels

function renderConnections(main) {
  const conns = table('connections-table', [
    { id: 'name', title: 'Name', get: (c) => c.name },
    { id: 'user', title: 'User', get: (c) => c.user },
    { id: 'vhost', title: 'Vhost', get: (c) => c.vhost },
    { id: 'peer', title: 'Peer', get: (c) => (c.peer_host == null ? undefined : `${c.peer_host}:${fmtText(c.peer_port)}`) },
    { id: 'tls', title: 'TLS', get: (c) => c.ssl, fmt: fmtBool },
    { id: 'state', title: 'State', get: (c) => c.state },
    { id: 'channels', title: 'Channels', get: (c) => num(c.channels), fmt: fmtInt, num: true },
    { id: 'recv', title: 'From client', get: rate('recv_oct_details'), fmt: (v) => (v === undefined ? '–' : fmtBytes(Math.round(v)) + '/s'), num: true },
    { id: 'send', title: 'To client', get: rate('send_oct_details'), fmt: (v) => (v === undefined ? '–' : fmtBytes(Math.round(v)) + '/s'), num: true },
    { id: 'actions', title: '', make: (c) => button('Close', () => {
      if (!confirmed(`Close connection ${c.name}?`)) return;
      act('Close connection', async () => {
        await api('DELETE', `/api/connections/${enc(c.name)}`, undefined, { 'X-Reason': 'closed from the console' });
        return `Closed ${c.name}`;
      });
    }, { class: 'danger', 'data-action': 'close' }) },
  ], 'no connections');
  const chans = table('channels-table', [
    { id: 'name', title: 'Channel', get: (c) => c.name },
    { id: 'connection', title: 'Connection', get: (c) => dig(c, 'connection_details.name') },
    { id: 'vhost', title: 'Vhost', get: (c) => c.vhost },
    { id: 'user', title: 'User', get: (c) => c.user },
    { id: 'number', title: 'Number', get: (c) => num(c.number), fmt: fmtInt, num: true },
    { id: 'consumers', title: 'Consumers', get: (c) => num(c.consumer_count), fmt: fmtInt, num: true },
    { id: 'unacked', title: 'Unacked', get: (c) => num(c.messages_unacknowledged), fmt: fmtInt, num: true },
    { id: 'prefetch', title: 'Prefetch', get: (c) => num(c.prefetch_count), fmt: fmtInt, num: true },
    { id: 'publish', title: 'Publish', get: rate('message_stats.publish_details'), fmt: fmtRate, num: true },
    { id: 'deliver', title: 'Deliver / get', get: rate('message_stats.deliver_get_details'), fmt: fmtRate, num: true },
  ], 'no channels');
  const chanNote = h('p', { class: 'note', id: 'channels-note', hidden: true }, 'This broker has no /api/channels.');
  main.append(h('h1', {}, 'Connections'), conns, h('h2', {}, 'Channels'), chanNote, chans);
  return async () => {
    const [c, ch] = await Promise.all([api('GET', '/api/connections'), optional('/api/channels')]);
    conns.update(c, (x) => x.name, (x) => ({ 'data-name': x.name }));
    chanNote.hidden = ch !== null;
    chans.update(ch || [], (x) => x.name, (x) => ({ 'data-name': x.name }));
  };
}

// ---------------------------------------------------------------------------------------------
// Admin: users, vhosts, permissions

function deleteButton(label, question, path) {
  return button('Delete', () => {
    if (!confirmed(question)) return;
    act(label, async () => { await api('DELETE', path); });
  }, { class: 'danger', 'data-action': 'delete' });
}

function renderAdmin(main) {
  const uName = h('input', { id: 'user-name', required: true, autocomplete: 'off' });
  const uPass = h('input', { id: 'user-password', type: 'password', autocomplete: 'new-password' });
  const uTags = h('input', { id: 'user-tags', value: 'management' });
  const vName = h('input', { id: 'vhost-name', required: true });
  const pVhost = vhostSelect('perm-vhost');
  const pUser = h('input', { id: 'perm-user', required: true, list: 'perm-users' });
  const pUsers = h('datalist', { id: 'perm-users' });
  const [pConf, pWrite, pRead] = ['configure', 'write', 'read'].map((k) => h('input', { id: 'perm-' + k, value: '.*' }));
  const users = table('users-table', [
    { id: 'name', title: 'Name', get: (u) => u.name },
    { id: 'tags', title: 'Tags', get: (u) => tagList(u.tags) },
    { id: 'actions', title: '', make: (u) => deleteButton(`Delete user ${u.name}`, `Delete user ${u.name} and close its connections?`, `/api/users/${enc(u.name)}`) },
  ]);
  const vhosts = table('vhosts-table', [
    { id: 'name', title: 'Name', get: (v) => v.name },
    { id: 'description', title: 'Description', get: (v) => v.description },
    { id: 'messages', title: 'Messages', get: (v) => num(v.messages), fmt: fmtInt, num: true },
    { id: 'actions', title: '', make: (v) => deleteButton(`Delete vhost ${v.name}`, `Delete vhost ${v.name} with all its queues, messages and connections?`, `/api/vhosts/${enc(v.name)}`) },
  ]);
  const perms = table('permissions-table', [
    { id: 'user', title: 'User', get: (p) => p.user },
    { id: 'vhost', title: 'Vhost', get: (p) => p.vhost },
    { id: 'configure', title: 'Configure', get: (p) => p.configure },
    { id: 'write', title: 'Write', get: (p) => p.write },
    { id: 'read', title: 'Read', get: (p) => p.read },
    { id: 'actions', title: '', make: (p) => deleteButton(`Clear permissions of ${p.user}`, `Clear ${p.user}'s permissions in ${p.vhost}?`, `/api/permissions/${enc(p.vhost)}/${enc(p.user)}`) },
  ]);
  main.append(
    h('h1', {}, 'Admin'),
    h('h2', {}, 'Users'),
    form('user-form', 'Add user', [field('Name', uName), field('Password', uPass), field('Tags (comma-separated)', uTags)], 'Add / update user', async () => {
      await api('PUT', `/api/users/${enc(uName.value)}`, { password: uPass.value, tags: uTags.value });
      return `Saved user ${uName.value}`;
    }),
    users,
    h('h2', {}, 'Virtual hosts'),
    form('vhost-form', 'Add vhost', [field('Name', vName)], 'Add vhost', async () => {
      await api('PUT', `/api/vhosts/${enc(vName.value)}`, {});
      return `Saved vhost ${vName.value}`;
    }),
    vhosts,
    h('h2', {}, 'Permissions'),
    form('perm-form', 'Set permissions', [field('Vhost', pVhost), field('User', pUser), pUsers,
      field('Configure', pConf), field('Write', pWrite), field('Read', pRead)], 'Set permissions', async () => {
      await api('PUT', `/api/permissions/${enc(pVhost.value)}/${enc(pUser.value)}`, { configure: pConf.value, write: pWrite.value, read: pRead.value });
      return `Set ${pUser.value}'s permissions in ${pVhost.value}`;
    }),
    perms);
  return async () => {
    const [u, v, p] = await Promise.all([api('GET', '/api/users'), api('GET', '/api/vhosts'), api('GET', '/api/permissions')]);
    users.update(u, (x) => x.name, (x) => ({ 'data-name': x.name }));
    vhosts.update(v, (x) => x.name, (x) => ({ 'data-name': x.name }));
    perms.update(p, (x) => x.vhost + '\u0000' + x.user, (x) => ({ 'data-vhost': x.vhost, 'data-user': x.user }));
    if (pUsers.children.length !== u.length) pUsers.replaceChildren(...u.map((x) => h('option', { value: x.name })));
  };
}

// ---------------------------------------------------------------------------------------------
// Plugins: versions, per-exchange stats, upload, rollback, remove

const STAT_KEYS = ['routed', 'cache_hits', 'failures', 'traps', 'deadlines', 'caps', 'plugin_errors'];

/** One exchange's line: counters, and latency/memory/error when the API gives them. */
function exchangeStats(x) {
  const parts = STAT_KEYS.filter((k) => x[k] !== undefined).map((k) => `${k} ${fmtInt(num(x[k]))}`);
  const p50 = num(dig(x, 'latency_us.p50')), p99 = num(dig(x, 'latency_us.p99'));
  if (p50 !== undefined || p99 !== undefined) parts.push(`p50 ${fmtText(p50)} µs`, `p99 ${fmtText(p99)} µs`);
  if (x.memory_bytes !== undefined) parts.push(`memory ${fmtBytes(num(x.memory_bytes))}`);
  if (x.last_error) parts.push(`last error: ${x.last_error}`);
  return `${x.vhost} ${x.name}: ${parts.join(' · ')}`;
}

function logLine(line) {
  if (typeof line === 'string') return line;
  const text = [line.time || line.at, line.level, line.exchange, line.message || line.msg || line.text].filter((v) => v != null).join(' ');
  return text || JSON.stringify(line);
}

function pluginLogs(p) {
  const lines = [...(p.logs || []), ...(p.exchanges || []).flatMap((x) => x.logs || [])];
  return lines.length ? lines.slice(-20).map(logLine).join('\n') : undefined;
}

const versionText = (v) => (v ? `${fmtText(v.version)} (${String(v.sha256 || '').slice(0, 12)})` : undefined);

function pluginAction(p, verb, label, method, path) {
  return button(label, () => {
    if (method === 'DELETE' && !confirmed(`Remove plugin ${p.name} from ${p.scope}? Its exchanges keep routing.`)) return;
    act(`${label} ${p.name}`, async () => {
      const answer = await api(method, path);
      return answer && answer.current ? `${p.name} in ${p.scope} is now version ${versionText(answer.current)}` : `${label} ${p.name}: done`;
    });
  }, { 'data-action': verb, class: method === 'DELETE' ? 'danger' : null });
}

function renderPlugins(main) {
  const vhost = vhostSelect('plugin-vhost');
  const file = h('input', { id: 'plugin-file', type: 'file', accept: '.wasm,application/wasm', required: true });
  const uploaded = h('p', { id: 'plugin-upload-result', class: 'result', 'data-testid': 'plugin-upload-result' });
  const list = table('plugins-table', [
    { id: 'name', title: 'Type', get: (p) => p.name },
    { id: 'scope', title: 'Scope', get: (p) => p.scope },
    { id: 'state', title: 'State', get: (p) => p.state },
    { id: 'version', title: 'Version', get: (p) => dig(p, 'current.version') },
    { id: 'sha256', title: 'sha256', get: (p) => dig(p, 'current.sha256'), fmt: (v) => (v ? String(v).slice(0, 16) : '–') },
    { id: 'origin', title: 'Origin', get: (p) => dig(p, 'current.origin') },
    { id: 'previous', title: 'Previous', get: (p) => dig(p, 'previous.version'), fmt: (v) => fmtText(v) },
    { id: 'previous_sha256', title: 'Previous sha256', get: (p) => dig(p, 'previous.sha256'), fmt: (v) => (v ? String(v).slice(0, 16) : '–') },
    { id: 'latency', title: 'p50 / p99 µs', get: (p) => (p.latency_us ? `${fmtText(p.latency_us.p50)} / ${fmtText(p.latency_us.p99)}` : undefined) },
    { id: 'memory', title: 'Memory', get: (p) => num(p.memory_bytes), fmt: fmtBytes, num: true },
    { id: 'last_error', title: 'Last error', get: (p) => p.last_error },
    { id: 'exchanges', title: 'Exchanges', get: (p) => ((p.exchanges || []).length ? p.exchanges.map(exchangeStats).join('\n') : undefined), pre: true, wide: true },
    { id: 'routed', title: 'Routed', get: (p) => (p.exchanges || []).reduce((s, x) => s + (num(x.routed) || 0), 0), fmt: fmtInt, num: true },
    { id: 'logs', title: 'Recent log lines', get: pluginLogs, pre: true, wide: true },
    { id: 'actions', title: '', make: (p) => (p.scope === 'broker' ? null : [
      pluginAction(p, 'rollback', 'Roll back', 'POST', `/api/plugins/${enc(p.scope)}/${enc(p.name)}/rollback`),
      pluginAction(p, 'remove', 'Remove', 'DELETE', `/api/plugins/${enc(p.scope)}/${enc(p.name)}`),
    ]) },
  ], 'no plugins');
  main.append(
    h('h1', {}, 'Plugins'),
    form('plugin-form', 'Upload plugin', [field('Vhost', vhost), field('Component (.wasm)', file)], 'Upload', async () => {
      const chosen = file.files[0];
      if (!chosen) throw new Error('choose a .wasm file');
      uploaded.textContent = '';
      const answer = await api('POST', `/api/plugins/${enc(vhost.value)}`, await chosen.arrayBuffer());
      const text = `Uploaded ${answer.name} into ${answer.scope}: version ${versionText(answer.current)}`;
      uploaded.textContent = text;
      Object.assign(uploaded.dataset, { name: answer.name, version: dig(answer, 'current.version') || '', sha256: dig(answer, 'current.sha256') || '' });
      return text;
    }),
    uploaded,
    list);
  return async () => {
    const plugins = await api('GET', '/api/plugins');
    list.update(plugins, (p) => p.scope + '\u0000' + p.name, (p) => ({ 'data-scope': p.scope, 'data-name': p.name }));
  };
}

// ---------------------------------------------------------------------------------------------

document.addEventListener('DOMContentLoaded', () => {
  $('login-form').addEventListener('submit', login);
  $('logout').addEventListener('click', () => showLogin(''));
  window.addEventListener('hashchange', route);
  if (sessionStorage.getItem(AUTH_KEY)) start().catch((e) => { if (!(e instanceof LoginNeeded)) showLogin(e.message); });
  else showLogin('');
});

// Headless-browser test of the web console bourse serves at `/` (host/console/): drives
// Debian's Chromium through playwright-core against a running broker, one step per feature,
// printing `ok N - step` per step and exiting non-zero with the reason at the first failure.
//
//   cd tests/console && npm ci
//   BOURSE_CONSOLE_URL=http://127.0.0.1:15672/ BOURSE_USER=guest BOURSE_PASSWORD=guest \
//   BOURSE_QUEUE=q BOURSE_PLUGIN_V1=a.wasm BOURSE_PLUGIN_V2=b.wasm BOURSE_PLUGIN_TYPE=x-regex \
//   BOURSE_SHOTS=/tmp/shots node console.mjs
//
// BOURSE_QUEUE (vhost `/`) must be receiving messages from an outside publisher while this
// runs. V1 and V2 are two components registering the same type BOURSE_PLUGIN_TYPE; they are told
// apart by their sha256 (their `version` strings may be equal). Optional: CHROMIUM (default
// /usr/bin/chromium), BOURSE_BINDING_KEY (default `console\..*`, a regex for x-regex) and
// BOURSE_ROUTING_KEY (default `console.test`) for the plugin exchange's binding and publish.
//
// BOURSE_CONSOLE_MODE=nodes checks only the overview's nodes table (a cluster test): it needs
// URL, USER, PASSWORD and SHOTS, plus BOURSE_NODES_UP and BOURSE_NODES_DOWN, comma-separated
// node names expected running and not running; exactly one running node must be the leader.

import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const WAIT_MS = 20_000;
const TOTAL_MS = 90_000;

function need(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`FAIL set ${name} (see the top of console.mjs)`);
    process.exit(2);
  }
  return value;
}

const NODES_MODE = process.env.BOURSE_CONSOLE_MODE === 'nodes';
const full = (name) => (NODES_MODE ? '' : need(name));
const list = (name) => (process.env[name] || '').split(',').filter(Boolean);
const URL = need('BOURSE_CONSOLE_URL');
const USER = need('BOURSE_USER');
const PASSWORD = need('BOURSE_PASSWORD');
const QUEUE = full('BOURSE_QUEUE');
const V1 = full('BOURSE_PLUGIN_V1');
const V2 = full('BOURSE_PLUGIN_V2');
const TYPE = full('BOURSE_PLUGIN_TYPE');
const SHOTS = need('BOURSE_SHOTS');
const NODES_UP = list('BOURSE_NODES_UP');
const NODES_DOWN = list('BOURSE_NODES_DOWN');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const BINDING_KEY = process.env.BOURSE_BINDING_KEY || 'console\\..*';
const ROUTING_KEY = process.env.BOURSE_ROUTING_KEY || 'console.test';

const sha256 = (path) => createHash('sha256').update(readFileSync(path)).digest('hex');
const SHA1 = NODES_MODE ? '' : sha256(V1);
const SHA2 = NODES_MODE ? '' : sha256(V2);
const RUN = Date.now().toString(36);
const TEST_QUEUE = `console-q-${RUN}`;
const TEST_EXCHANGE = `console-x-${RUN}`;
const PAYLOAD = `hello from the console test ${RUN}`;

let browser;
let page;
let count = 0;
const pageErrors = [];

const overall = setTimeout(() => finish(`the whole test took over ${TOTAL_MS / 1000} s`), TOTAL_MS);

async function finish(failure) {
  if (failure) {
    console.error(`FAIL ${failure}`);
    const status = await text('#status').catch(() => null);
    if (status) console.error(`  console status line: ${status}`);
    for (const e of pageErrors) console.error(`  page error: ${e}`);
    await page?.screenshot({ path: join(SHOTS, 'failure.png'), fullPage: true }).catch(() => {});
  }
  clearTimeout(overall);
  await browser?.close().catch(() => {});
  process.exit(failure ? 1 : 0);
}

async function step(title, fn) {
  const started = Date.now();
  try {
    await fn();
  } catch (e) {
    await finish(`${title}: ${String(e.message || e).split('\n')[0]}`);
  }
  console.log(`ok ${++count} - ${title} (${Date.now() - started} ms)`);
}

/** A CSS string literal. */
const q = (v) => `"${String(v).replace(/["\\]/g, '\\$&')}"`;

const text = (sel) => page.evaluate((s) => document.querySelector(s)?.textContent ?? null, sel);
const attr = (sel, name = 'data-value') =>
  page.evaluate(([s, n]) => document.querySelector(s)?.getAttribute(n) ?? null, [sel, name]);

/** The `data-value` of column `col` in the row of `table` whose data attributes are `match`. */
function cell(table, match, col) {
  const row = Object.entries(match).map(([k, v]) => `[data-${k}=${q(v)}]`).join('');
  return attr(`#${table} tbody tr${row} td[data-col=${q(col)}]`);
}

/**
 * Polls `probe` (answers [done, what it saw]) until done, for at most WAIT_MS. Stops at once
 * when the console's status line shows an error starting with `action` (the API's reason).
 */
async function until(what, probe, action) {
  const deadline = Date.now() + WAIT_MS;
  let seen;
  while (Date.now() < deadline) {
    let done;
    [done, seen] = await probe();
    if (done) return seen;
    if (action) {
      const [kind, status] = [await attr('#status', 'data-kind'), await text('#status')];
      if (kind === 'error' && status && status.includes(action)) throw new Error(`${what}: the console says "${status}"`);
    }
    await page.waitForTimeout(250);
  }
  throw new Error(`${what} (waited ${WAIT_MS / 1000} s; last seen: ${JSON.stringify(seen)})`);
}

async function go(pageName) {
  await page.evaluate((h) => { location.hash = h; }, `#/${pageName}`);
  await page.waitForSelector(`#main[data-page=${q(pageName)}]`);
}

/** Waits for a vhost <select> to be filled, then picks `/`. */
async function pickVhost(id) {
  await page.waitForSelector(`#${id}[data-loaded=true]`);
  await page.selectOption(`#${id}`, '/');
}

async function upload(path, sha) {
  await pickVhost('plugin-vhost');
  await page.setInputFiles('#plugin-file', path);
  await page.click('#plugin-submit');
  await until(`the upload of ${path} answers`, async () => {
    const got = await attr('#plugin-upload-result', 'data-sha256');
    return [got === sha, got];
  }, 'Upload plugin');
  return until(`plugin ${TYPE} in / listed with sha256 ${sha.slice(0, 12)}`, async () => {
    const got = await cell('plugins-table', { scope: '/', name: TYPE }, 'sha256');
    return [got === sha, got];
  });
}

const pluginCell = (col) => cell('plugins-table', { scope: '/', name: TYPE }, col);

browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
}).catch((e) => finish(`cannot start ${CHROMIUM}: ${e.message.split('\n')[0]}`));
page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
page.setDefaultTimeout(WAIT_MS);
page.on('pageerror', (e) => pageErrors.push(e.message));
page.on('dialog', (d) => d.accept());
mkdirSync(SHOTS, { recursive: true });

await step('the console loads and asks for a login', async () => {
  await page.goto(URL);
  await page.waitForSelector('#login-form', { state: 'visible' });
});

await step('a wrong password is refused with the API reason', async () => {
  await page.fill('#login-user', USER);
  await page.fill('#login-password', PASSWORD + '-wrong');
  await page.click('#login-submit');
  const reason = await until('the login error shows', async () => {
    const t = await text('#login-error');
    return [Boolean(t), t];
  });
  if (!/login failed/i.test(reason)) throw new Error(`expected "Login failed", got "${reason}"`);
  if (await page.isVisible('#app')) throw new Error('the console opened with a wrong password');
});

await step('logging in opens the console', async () => {
  await page.fill('#login-user', USER);
  await page.fill('#login-password', PASSWORD);
  await page.click('#login-submit');
  await page.waitForSelector('#app', { state: 'visible' });
  await until(`#whoami names ${USER}`, async () => {
    const t = await text('#whoami');
    return [Boolean(t && t.startsWith(USER)), t];
  });
});

/** The overview's nodes table lists exactly `up` (running) and `down` (not running); among
 * the running ones, one leader when `cluster`. */
async function nodesShown(up, down, cluster) {
  await go('overview');
  const want = [...up.map((n) => [n, 'true']), ...down.map((n) => [n, 'false'])].sort();
  await until(`the nodes table shows ${JSON.stringify(want)}`, async () => {
    const rows = await page.evaluate(() => [...document.querySelectorAll('#nodes-table tbody tr[data-name]')]
      .map((tr) => [tr.dataset.name, tr.querySelector('td[data-col=running]').dataset.value,
        tr.querySelector('td[data-col=leader]').dataset.value]));
    const shown = rows.map(([n, r]) => [n, r]).sort();
    const leaders = rows.filter(([, r, l]) => r === 'true' && l === 'true').length;
    const done = JSON.stringify(shown) === JSON.stringify(want) && leaders === (cluster ? 1 : 0);
    return [done, rows];
  });
}

if (NODES_MODE) {
  await step(`overview: nodes ${NODES_UP} running, ${NODES_DOWN.length ? NODES_DOWN : 'none'} down, one leader`, async () => {
    await nodesShown(NODES_UP, NODES_DOWN, true);
    await page.screenshot({ path: join(SHOTS, `nodes-${NODES_DOWN.length}-down.png`), fullPage: true });
  });
  await step('no uncaught error in the page', async () => {
    if (pageErrors.length) throw new Error(pageErrors.join('; '));
  });
  await finish();
}

await step('overview: the nodes table lists this one node, running, in no cluster', async () => {
  const node = await page.evaluate(async () => {
    const auth = { Authorization: 'Basic ' + sessionStorage.getItem('bourse.auth') };
    return (await (await fetch('/api/overview', { headers: auth })).json()).node;
  });
  await nodesShown([node], [], false);
});

await step('overview: the rate chart draws and the publish rate is > 0', async () => {
  await go('overview');
  const box = await (await page.waitForSelector('#rate-chart', { state: 'visible' })).boundingBox();
  if (!box || box.width < 200 || box.height < 100) throw new Error(`the chart canvas is ${JSON.stringify(box)}`);
  await until('#ov-publish-rate > 0', async () => {
    const v = await attr('#ov-publish-rate');
    return [Number(v) > 0, v];
  });
  await until('the chart has 3 points', async () => {
    const v = await attr('#rate-chart', 'data-points');
    return [Number(v) >= 3, v];
  });
  // Some pixel of the publish line's colour (#2a7ab0) must be on the canvas.
  const drawn = await page.evaluate(() => {
    const c = document.getElementById('rate-chart');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    for (let i = 0; i < d.length; i += 4) {
      if (Math.abs(d[i] - 42) < 12 && Math.abs(d[i + 1] - 122) < 12 && Math.abs(d[i + 2] - 176) < 12 && d[i + 3] > 200) return true;
    }
    return false;
  });
  if (!drawn) throw new Error('no publish line on the chart');
  await page.screenshot({ path: join(SHOTS, 'overview.png'), fullPage: true });
});

await step(`queues: ${QUEUE} is listed with a publish rate > 0`, async () => {
  await go('queues');
  await until(`${QUEUE}'s publish rate > 0`, async () => {
    const v = await cell('queues-table', { vhost: '/', name: QUEUE }, 'publish');
    return [Number(v) > 0, v];
  });
  await page.screenshot({ path: join(SHOTS, 'queues.png'), fullPage: true });
});

let version1;
await step(`plugins: upload ${V1} into / and see it listed with its version`, async () => {
  await go('plugins');
  await upload(V1, SHA1);
  version1 = await pluginCell('version');
  if (!version1) throw new Error('no version shown');
  console.log(`  ${TYPE} v1: version ${version1}, sha256 ${SHA1.slice(0, 12)}`);
});

await step(`declare queue ${TEST_QUEUE}`, async () => {
  await go('queues');
  await pickVhost('q-declare-vhost');
  await page.fill('#q-declare-name', TEST_QUEUE);
  await page.click('#q-declare-submit');
  await until(`${TEST_QUEUE} is listed`, async () => {
    const v = await cell('queues-table', { vhost: '/', name: TEST_QUEUE }, 'messages');
    return [v === '0', v];
  }, 'Declare queue');
});

await step(`declare exchange ${TEST_EXCHANGE} of type ${TYPE}`, async () => {
  await go('exchanges');
  await pickVhost('x-declare-vhost');
  await page.fill('#x-declare-name', TEST_EXCHANGE);
  await page.fill('#x-declare-type', TYPE);
  await page.click('#x-declare-submit');
  const plugin = await until(`${TEST_EXCHANGE} is listed with plugin ${TYPE}`, async () => {
    const v = await cell('exchanges-table', { vhost: '/', name: TEST_EXCHANGE }, 'plugin');
    return [Boolean(v && v.startsWith(TYPE + ' ')), v];
  }, 'Declare exchange');
  console.log(`  exchange runs ${plugin}`);
});

await step(`bind ${TEST_QUEUE} to ${TEST_EXCHANGE} by ${BINDING_KEY}`, async () => {
  await pickVhost('bind-vhost');
  await page.fill('#bind-exchange', TEST_EXCHANGE);
  await page.fill('#bind-queue', TEST_QUEUE);
  await page.fill('#bind-key', BINDING_KEY);
  await page.click('#bind-submit');
  await until('the status line says the binding was made', async () => {
    const [kind, t] = [await attr('#status', 'data-kind'), await text('#status')];
    return [kind === 'ok' && Boolean(t && t.includes(`Bound ${TEST_QUEUE}`)), t];
  }, 'Bind');
});

await step('publish through the console form: routed: true', async () => {
  await pickVhost('publish-vhost');
  await page.fill('#publish-exchange', TEST_EXCHANGE);
  await page.fill('#publish-key', ROUTING_KEY);
  await page.fill('#publish-payload', PAYLOAD);
  await page.click('#publish-submit');
  await until('#publish-result says routed: true', async () => {
    const t = await text('#publish-result');
    return [t === 'routed: true', t];
  }, 'Publish');
});

await step(`${TEST_QUEUE} holds 1 message`, async () => {
  await go('queues');
  await until(`${TEST_QUEUE}'s message count is 1`, async () => {
    const v = await cell('queues-table', { vhost: '/', name: TEST_QUEUE }, 'messages');
    return [v === '1', v];
  });
});

await step('queue detail: Get messages shows the payload (requeued)', async () => {
  await page.click(`#queues-table tr[data-vhost="/"][data-name=${q(TEST_QUEUE)}] td[data-col=name] a`);
  await page.waitForSelector('#main[data-page=queue]');
  await until('#q-messages is 1', async () => {
    const v = await attr('#q-messages');
    return [v === '1', v];
  });
  await page.selectOption('#q-get-ackmode', 'ack_requeue_true');
  await page.click('#q-get-submit');
  await until('the message shows', async () => {
    const t = await text('#q-get-results .payload');
    return [t === PAYLOAD, t];
  }, 'Get messages');
});

await step(`plugins: ${TYPE}'s routed stat counted the message`, async () => {
  await go('plugins');
  await until('routed >= 1', async () => {
    const v = await pluginCell('routed');
    return [Number(v) >= 1, v];
  });
});

await step(`plugins: upload ${V2} and see the version change`, async () => {
  await upload(V2, SHA2);
  const [previous, version2] = [await pluginCell('previous_sha256'), await pluginCell('version')];
  if (previous !== SHA1) throw new Error(`previous sha256 is ${previous}, expected v1's ${SHA1}`);
  const uploaded = await attr('#plugin-upload-result', 'data-version');
  if (version2 !== uploaded) throw new Error(`the table shows version ${version2}, the upload answered ${uploaded}`);
  console.log(`  ${TYPE} v2: version ${version2}, sha256 ${SHA2.slice(0, 12)}${version2 === version1 ? ' (same version string as v1)' : ''}`);
  await page.screenshot({ path: join(SHOTS, 'plugins.png'), fullPage: true });
});

await step('plugins: Roll back brings v1 back', async () => {
  await page.click(`#plugins-table tr[data-scope="/"][data-name=${q(TYPE)}] button[data-action=rollback]`);
  await until('the current sha256 is v1\'s again', async () => {
    const v = await pluginCell('sha256');
    return [v === SHA1, v];
  }, 'Roll back');
  const version = await pluginCell('version');
  if (version !== version1) throw new Error(`version ${version} after the rollback, expected ${version1}`);
});

await step('no uncaught error in the page', async () => {
  if (pageErrors.length) throw new Error(pageErrors.join('; '));
});

// Leave the broker as found (best effort; the plugin type stays, at v1).
await page.evaluate(async ([queue, exchange]) => {
  const auth = { Authorization: 'Basic ' + sessionStorage.getItem('bourse.auth') };
  await fetch(`/api/exchanges/%2F/${encodeURIComponent(exchange)}`, { method: 'DELETE', headers: auth });
  await fetch(`/api/queues/%2F/${encodeURIComponent(queue)}`, { method: 'DELETE', headers: auth });
}, [TEST_QUEUE, TEST_EXCHANGE]).catch(() => {});

console.log(`all ${count} steps passed; screenshots in ${SHOTS}`);
await finish();

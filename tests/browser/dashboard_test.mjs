// dashboard_test.mjs - drives fleetgw's dashboard in a real Chromium
// (Debian's /usr/bin/chromium through playwright-core; no browser download).
//
//   node dashboard_test.mjs --url http://127.0.0.1:PORT/ --token TOKEN \
//        --active leaf-a,leaf-b --pending leaf-new [--psk-device leaf-a] [--screenshot out.png]
//        [--outbox-device leaf-c --outbox-count N]
//
// Every option may also come from the environment: DASH_URL, DASH_TOKEN,
// DASH_ACTIVE, DASH_PENDING, DASH_SCREENSHOT (default $BUILD_DIR/dashboard.png,
// BUILD_DIR defaulting to build-test), CHROMIUM (default /usr/bin/chromium).
//
// It signs in with the token form, waits for the rows of the connected
// leaves, clicks Approve on the pending leaf in the Pending section and waits
// - without reloading - until that leaf's row shows state "active".  The
// devices table shows how each leaf authenticated on the LAN (plain UDP here,
// in the warning style).  With --psk-device it then creates that device's
// DTLS key from its panel (with the confirmation) and checks that the key is
// shown once: in a copyable box, gone for good once the panel is closed.
// With --outbox-device (a leaf whose uplink is cut, N messages stored for the
// cloud) the Outbox column shows N for it, and its panel offers Discard.  It
// exits 0 on success and 1 with a one-line reason on any failure (and then
// leaves a screenshot next to the requested one, named *-failure.png).

import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new Error('unexpected argument ' + a);
    const eq = a.indexOf('=');
    if (eq > 0) out[a.slice(2, eq)] = a.slice(eq + 1);
    else out[a.slice(2)] = argv[++i];
  }
  return out;
}

const args = parseArgs(process.argv.slice(2));
const opt = {
  url: args.url || process.env.DASH_URL,
  token: args.token || process.env.DASH_TOKEN,
  active: (args.active || process.env.DASH_ACTIVE || '').split(',').filter(Boolean),
  pending: args.pending || process.env.DASH_PENDING,
  pskDevice: args['psk-device'] || process.env.DASH_PSK_DEVICE,
  outboxDevice: args['outbox-device'] || process.env.DASH_OUTBOX_DEVICE,
  outboxCount: args['outbox-count'] || process.env.DASH_OUTBOX_COUNT || '1',
  screenshot: args.screenshot || process.env.DASH_SCREENSHOT ||
    path.join(process.env.BUILD_DIR || 'build-test', 'dashboard.png'),
  chromium: args.chromium || process.env.CHROMIUM || '/usr/bin/chromium',
  timeoutMs: Number(args.timeout || process.env.DASH_TIMEOUT_MS || 30000),
};

class Failure extends Error {}

function fail(msg) {
  throw new Failure(msg);
}

function log(msg) {
  process.stdout.write('[dashboard_test] ' + msg + '\n');
}

const rowSel = (id) => '#device-rows tr[data-client-id="' + id.replace(/["\\]/g, '\\$&') + '"]';

// Waits until the row's state cell reads `state`; fails with what it saw.
async function waitRowState(page, id, state, timeoutMs, why) {
  try {
    await page.waitForFunction(([sel, want]) => {
      const cell = document.querySelector(sel + ' [data-field="state"]');
      return cell && cell.textContent.trim() === want;
    }, [rowSel(id), state], { timeout: timeoutMs, polling: 100 });
  } catch (e) {
    const seen = await page.evaluate((sel) => {
      const cell = document.querySelector(sel + ' [data-field="state"]');
      return cell ? 'state "' + cell.textContent.trim() + '"' : 'no such row';
    }, rowSel(id)).catch(() => 'page gone');
    fail(why + ': row ' + id + ' did not show state "' + state + '" within ' + timeoutMs + ' ms (' + seen + ')');
  }
}

// Creates the device's DTLS key from its panel and checks it is shown once.
async function createKeyOnce(page, id) {
  log('create the DTLS key of ' + id + ' from its panel');
  const open = async () => {
    await page.click(rowSel(id) + ' button');
    await page.locator('#device-dialog[open] #psk-section').waitFor({ state: 'visible', timeout: 10000 })
      .catch(() => fail('the panel of ' + id + ' has no DTLS key section'));
  };
  await open();
  const create = page.locator('#psk-section [data-psk-action="create"]');
  if ((await create.count()) !== 1) fail('no Create key button for ' + id + ' (admin token)');
  await create.click();
  await page.locator('#confirm-dialog[open]').waitFor({ state: 'visible', timeout: 5000 })
    .catch(() => fail('Create key asked for no confirmation'));
  await page.click('#confirm-ok');
  await page.locator('#psk-key').waitFor({ state: 'visible', timeout: 10000 })
    .catch(() => fail('no key shown after Create key'));
  const key = await page.inputValue('#psk-key');
  if (!/^[0-9a-f]{64}$/.test(key)) fail('the shown key is not 32 bytes of hex: ' + key.length + ' characters');
  if (!(await page.getAttribute('#psk-key', 'readonly') !== null)) fail('the key box is not read-only');
  const box = await page.textContent('[data-psk-once]');
  if (!box.includes('will not be shown again')) fail('the key box does not warn that it is shown once');
  await page.locator('#psk-section [data-field="psk"]').filter({ hasText: 'held' }).waitFor({ timeout: 10000 })
    .catch(() => fail('the panel does not say the key is held'));
  // The panel refreshes on events; the key stays until the panel closes.
  await page.waitForTimeout(600);
  if ((await page.inputValue('#psk-key').catch(() => '')) !== key) fail('the key box went away by itself');
  await page.keyboard.press('Escape');
  await page.locator('#device-dialog').waitFor({ state: 'hidden', timeout: 5000 })
    .catch(() => fail('Escape did not close the device panel'));
  await open();
  if ((await page.locator('#psk-key').count()) !== 0) fail('the key was shown a second time');
  const html = await page.evaluate(() => document.documentElement.outerHTML +
    Array.from(document.querySelectorAll('input')).map((i) => i.value).join(' '));
  if (html.includes(key)) fail('the key is still somewhere in the page');
  if ((await page.locator('#psk-section [data-psk-action="create"]').count()) !== 0 ||
      (await page.locator('#psk-section [data-psk-action="rotate"]').count()) !== 1) {
    fail('after Create key the panel should offer Rotate and Revoke, not Create');
  }
  await page.keyboard.press('Escape');
  await page.locator('#device-dialog').waitFor({ state: 'hidden', timeout: 5000 }).catch(() => {});
  await page.waitForFunction((sel) => {
    const c = document.querySelector(sel + ' [data-field="lan"]');
    return c && c.textContent.includes('key');
  }, rowSel(id), { timeout: 10000 }).catch(() => fail('the row of ' + id + ' does not show that it holds a key'));
  log('the key of ' + id + ' was shown once');
}

// The Outbox column shows what waits for the cloud; the panel offers Discard.
async function checkOutbox(page, id, count) {
  log('the outbox of ' + id + ': ' + count + ' waiting');
  const head = await page.textContent('#device-table th[data-sort="outbox"]').catch(() => null);
  if (!head || head.trim() !== 'Outbox') fail('the devices table has no Outbox column');
  await page.waitForFunction(([sel, want]) => {
    const c = document.querySelector(sel + ' [data-field="outbox"]');
    return c && c.firstChild && c.firstChild.textContent.trim() === want;
  }, [rowSel(id), count], { timeout: 10000, polling: 200 }).catch(async () => {
    const seen = await page.textContent(rowSel(id) + ' [data-field="outbox"]').catch(() => 'no such row');
    fail('the Outbox cell of ' + id + ' does not show ' + count + ' waiting: ' + JSON.stringify(seen));
  });
  await page.click(rowSel(id) + ' button');
  await page.locator('#device-dialog[open] #outbox-section [data-outbox-action="discard"]')
    .waitFor({ state: 'visible', timeout: 10000 })
    .catch(() => fail('the panel of ' + id + ' offers no Discard of its outbox'));
  const waiting = await page.textContent('#outbox-section [data-field="outbox-messages"]');
  if (!waiting.startsWith(count + ' ')) fail('the outbox section of ' + id + ' says ' + JSON.stringify(waiting));
  await page.keyboard.press('Escape');
  await page.locator('#device-dialog').waitFor({ state: 'hidden', timeout: 5000 })
    .catch(() => fail('Escape did not close the device panel'));
}

// The device panel (issue 14): the certificate's id shown once when it is
// its fingerprint (local-ca); the session's rate, last message, keep-alive
// and reconnects; times with their zone; Block asks first, and Cancel
// leaves the device as it was.
async function checkPanel(page, id) {
  const info = await page.$eval('#dev-body', (b) => {
    const dts = [...b.querySelectorAll('dt')].map((x) => x.textContent.trim());
    const f = (k) => { const e = b.querySelector('[data-field="' + k + '"]'); return e ? e.textContent.trim() : null; };
    return { dts, id: f('cert-id'), fp: f('cert-fp'), keepalive: f('keepalive'), reconnects: f('reconnects'),
      last: f('last-message'), msgsIn: f('msgs-in') };
  });
  if (!info.dts.includes('Id / fingerprint') || info.fp !== null || info.dts.includes('Fingerprint')) {
    fail('the panel of ' + id + ' does not show its certificate id (= fingerprint) once: ' + JSON.stringify(info.dts));
  }
  if (!info.keepalive || !/^\d+ (s|min|h)/.test(info.keepalive)) fail('no keep-alive in the panel: ' + info.keepalive);
  if (!info.reconnects || !/^\d+$/.test(info.reconnects)) fail('no reconnect count in the panel: ' + info.reconnects);
  // It has not published (yet): "none since the start", else a time with its zone.
  if (!info.last || !(info.last === 'none since the start' || /\d\d:\d\d:\d\d \S+ \(/.test(info.last))) {
    fail('the last message time has no time zone (or is missing): ' + info.last);
  }
  const firstSeen = await page.$eval('#dev-body', (b) => {
    const dt = [...b.querySelectorAll('dt')].find((x) => x.textContent.trim() === 'First seen');
    return dt ? dt.nextElementSibling.textContent.trim() : '';
  });
  if (!/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+$/.test(firstSeen)) fail('"First seen" without its zone: ' + firstSeen);
  if (!info.msgsIn || !/^\d/.test(info.msgsIn)) fail('no messages in the panel: ' + info.msgsIn);
  const block = page.locator('#dev-body [data-action="block"]');
  if ((await block.count()) !== 1) fail('the panel of an active device has no Block button');
  await block.click();
  await page.locator('#confirm-dialog[open]').waitFor({ state: 'visible', timeout: 5000 })
    .catch(() => fail('Block asked for no confirmation'));
  const text = await page.textContent('#confirm-text');
  if (!text.includes(id)) fail('the Block confirmation does not name the device: ' + text);
  await page.click('#confirm-dialog button[value="cancel"]');
  await page.waitForTimeout(500);
  const state = await page.$eval('#dev-body .panel-status', (e) => e.textContent);
  if (!state.includes('active')) fail('a cancelled Block changed the device: ' + state);
  log('panel of ' + id + ': keep-alive ' + info.keepalive + ', reconnects ' + info.reconnects + ', last ' + info.last);
}

// The chart is drawn from the gateway's history right after a reload, not
// only from the polls that follow (one sample per 10 s): wait until the
// gateway holds a sample, reload, and look before the first poll could
// add one.
async function checkChartAfterReload(page) {
  const n = await page.evaluate(async () => {
    for (let i = 0; i < 30; i++) {
      const r = await fetch('api/v1/status/history', {
        headers: { Authorization: 'Bearer ' + sessionStorage.getItem('fleetgw.token') } });
      const j = await r.json();
      if (j.items.length >= 2) return j.items.length;
      await new Promise((res) => setTimeout(res, 1000));
    }
    return 0;
  });
  if (n < 2) fail('the gateway kept no message history in 30 s');
  await page.reload();
  await page.waitForFunction((want) => {
    const l = document.querySelector('#rate-chart .line-in');
    return l && Number(l.dataset.points) >= want;
  }, n, { timeout: 5000, polling: 100 }).catch(() => fail('the chart did not draw the ' + n + ' samples of the history after a reload'));
  // The audit log's times carry their zone too.
  const t = await page.locator('#audit-rows td').first().textContent({ timeout: 5000 }).catch(() => '');
  if (!/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+$/.test(t.trim())) fail('an audit time without its zone: ' + t);
  log('the chart drew ' + n + ' samples of history after a reload');
}

async function main() {
  if (!opt.url || !opt.token || !opt.pending) {
    fail('usage: --url URL --token TOKEN --pending CLIENT_ID [--active ID,ID] [--screenshot FILE]');
  }
  if (!fs.existsSync(opt.chromium)) fail('no Chromium at ' + opt.chromium + ' (apt-get install -y chromium)');
  fs.mkdirSync(path.dirname(path.resolve(opt.screenshot)), { recursive: true });

  // A fresh profile each run: no cached token, no service worker, no cache.
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'fleetgw-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: opt.chromium,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1440, height: 1000 },
    deviceScaleFactor: 1,
    timeout: 30000,
  });
  const problems = [];
  let page;
  try {
    page = context.pages()[0] || await context.newPage();
    page.setDefaultTimeout(opt.timeoutMs);
    page.on('pageerror', (e) => problems.push('uncaught error in the page: ' + e.message));
    page.on('console', (m) => {
      if (m.type() === 'error') log('console error: ' + m.text());
    });
    // Nothing may be fetched from outside the gateway (the box may be offline).
    const origin = new URL(opt.url).origin;
    page.on('request', (r) => {
      const u = r.url();
      if (!u.startsWith(origin) && !u.startsWith('data:') && !u.startsWith('blob:')) {
        problems.push('request outside the gateway: ' + u);
      }
    });

    log('open ' + opt.url);
    const resp = await page.goto(opt.url, { waitUntil: 'domcontentloaded' });
    if (!resp || !resp.ok()) fail('GET ' + opt.url + ' answered ' + (resp ? resp.status() : 'nothing'));

    // Sign in with the form.
    try {
      await page.locator('#token-input').waitFor({ state: 'visible' });
    } catch (e) {
      fail('no token form (#token-input) on the page');
    }
    await page.fill('#token-input', opt.token);
    await page.click('#login-form button[type="submit"]');
    try {
      await page.locator('#main').waitFor({ state: 'visible' });
    } catch (e) {
      const msg = await page.textContent('#login-error').catch(() => '');
      fail('sign-in did not complete' + (msg ? ': ' + msg : ''));
    }
    const stored = await page.evaluate(() => sessionStorage.getItem('fleetgw.token'));
    if (stored !== opt.token) fail('the token was not kept in sessionStorage');
    // A marker that a reload would wipe out.
    await page.evaluate(() => { window.__fleetgwNoReload = true; });

    for (const id of opt.active) {
      log('wait for the row of ' + id);
      await waitRowState(page, id, 'active', opt.timeoutMs, 'connected leaf');
    }

    // The "Certificate expires" column: a date for a provisioned leaf (years
    // away: neither the warning nor the error style); the overview warns
    // about the local CA's certificate (30 days left, within twice the
    // default provisioning.expiry_warn_days) and about no leaf certificate.
    const heads = await page.$$eval('#device-table th', (els) => els.map((e) => e.textContent.trim()));
    if (!heads.includes('Certificate expires')) fail('no "Certificate expires" column: ' + JSON.stringify(heads));
    for (const id of opt.active) {
      const cell = await page.$eval('#device-rows tr[data-client-id="' + id + '"] td[data-field="cert"]',
        (td) => ({ text: td.textContent, cls: td.className })).catch(() => null);
      if (!cell || !/^\d{4}-\d{2}-\d{2}/.test(cell.text) || /expir/.test(cell.cls)) {
        fail('the certificate cell of ' + id + ' reads ' + JSON.stringify(cell));
      }
    }
    await page.waitForFunction(() => {
      const p = document.querySelector('#cert-warning');
      return p && !p.hidden && /local CA/.test(p.textContent);
    }, null, { timeout: 10000 }).catch(() => fail('the overview does not warn about the local CA\'s expiry'));
    if (/certificates? expires? within/.test(await page.textContent('#cert-warning'))) {
      fail('the overview warns about leaf certificates that expire in years');
    }

    log('approve ' + opt.pending + ' in the Pending section');
    const approve = page.locator('#pending [data-client-id="' + opt.pending + '"] [data-action="approve"]');
    try {
      await approve.waitFor({ state: 'visible' });
    } catch (e) {
      const listed = await page.$$eval('#pending [data-client-id]', (els) => els.map((e) => e.dataset.clientId));
      fail(opt.pending + ' not listed under Pending approvals (listed: ' + JSON.stringify(listed) + ')');
    }
    if ((await page.locator('#pending [data-client-id="' + opt.pending + '"] [data-action="block"]').count()) !== 1) {
      fail('the pending entry of ' + opt.pending + ' has no Block button');
    }
    const t0 = Date.now();
    await approve.click();
    await waitRowState(page, opt.pending, 'active', opt.timeoutMs, 'after Approve');
    log(opt.pending + ' shows "active" ' + (Date.now() - t0) + ' ms after the click');
    if (!(await page.evaluate(() => window.__fleetgwNoReload === true))) fail('the page reloaded');
    try {
      await page.locator('#pending [data-client-id="' + opt.pending + '"]').waitFor({ state: 'detached', timeout: 10000 });
    } catch (e) {
      fail(opt.pending + ' is still listed under Pending approvals after it became active');
    }

    // The live event feed saw it, and the overview counts follow.
    await page.waitForFunction((id) => Array.from(document.querySelectorAll('#feed-list [data-client-id]'))
      .some((li) => li.dataset.clientId === id), opt.pending, { timeout: 10000 })
      .catch(() => fail('no event for ' + opt.pending + ' in the live feed'));
    const want = opt.active.length + 1;
    await page.waitForFunction((n) => {
      const el = document.querySelector('[data-count="active"] .count-n');
      return el && Number(el.textContent.replace(/,/g, '')) >= n;
    }, want, { timeout: 10000 }).catch(() => fail('the overview does not count ' + want + ' active devices'));

    // The device panel opens from its row and shows the certificate.
    await page.click(rowSel(opt.pending) + ' button');
    await page.locator('#device-dialog[open] .panel-status').waitFor({ state: 'visible', timeout: 10000 })
      .catch(() => fail('the device panel did not open'));
    const panel = await page.textContent('#dev-body');
    if (!panel.includes('Not after') || !/fingerprint/i.test(panel)) fail('the device panel shows no certificate');
    await checkPanel(page, opt.pending);
    await page.screenshot({ path: opt.screenshot.replace(/\.png$/, '') + '-device.png' });
    // Rotate its certificate from the panel: asks first, then the panel shows
    // the new certificate's id.
    {
      const idOf = () => page.$eval('#dev-body', (b) => {
        const dts = [...b.querySelectorAll('dt')];
        const dt = dts.find((x) => /^Id( \/ fingerprint)?$/.test(x.textContent.trim()));
        return dt && dt.nextElementSibling ? dt.nextElementSibling.textContent.trim() : null;
      });
      const before = await idOf();
      if (!before) fail('the device panel shows no certificate id');
      const rot = page.locator('#dev-body [data-action="rotate"]');
      if ((await rot.count()) !== 1) fail('the panel of an active device has no Rotate certificate button');
      log('rotate the certificate of ' + opt.pending + ' from its panel');
      await rot.click();
      await page.locator('#confirm-dialog[open]').waitFor({ state: 'visible', timeout: 5000 })
        .catch(() => fail('Rotate certificate asked for no confirmation'));
      await page.click('#confirm-ok');
      const t1 = Date.now();
      let now = before;
      // The panel follows the device's events; reopen it too, in case.
      while (now === before && Date.now() - t1 < 15000) {
        await page.waitForTimeout(500);
        now = await idOf().catch(() => before);
        if (now !== before) break;
        await page.keyboard.press('Escape');
        await page.locator('#device-dialog').waitFor({ state: 'hidden', timeout: 5000 }).catch(() => {});
        await page.click(rowSel(opt.pending) + ' button');
        await page.locator('#device-dialog[open] .panel-status').waitFor({ state: 'visible', timeout: 10000 })
          .catch(() => {});
        now = await idOf().catch(() => before);
      }
      if (!now || now === before) fail('the panel did not show a new certificate after the rotation');
    }
    await page.keyboard.press('Escape');
    await page.locator('#device-dialog').waitFor({ state: 'hidden', timeout: 5000 })
      .catch(() => fail('Escape did not close the device panel'));

    // The LAN column: every connected leaf came over plain UDP.
    const lanHead = await page.textContent('#device-table th[data-sort="lan_security"]').catch(() => null);
    if (!lanHead || lanHead.trim() !== 'LAN') fail('the devices table has no LAN column');
    for (const id of opt.active) {
      const lan = await page.$eval(rowSel(id) + ' [data-field="lan"] .badge',
        (b) => ({ text: b.textContent.trim(), cls: b.className })).catch(() => null);
      if (!lan || lan.text !== 'plain' || !lan.cls.includes('lan-plain')) {
        fail('the LAN cell of ' + id + ' is not the "plain" warning badge: ' + JSON.stringify(lan));
      }
    }

    if (opt.outboxDevice) await checkOutbox(page, opt.outboxDevice, opt.outboxCount);
    if (opt.pskDevice) await createKeyOnce(page, opt.pskDevice);

    await checkChartAfterReload(page);

    // Let the rate chart collect a few samples (one per 2 s poll) for the
    // screenshot; not a failure if it has fewer.
    await page.waitForFunction(() => {
      const l = document.querySelector('#rate-chart .line-in');
      return l && l.getAttribute('points').split(' ').length >= 4;
    }, null, { timeout: 10000, polling: 250 }).catch(() => {});
    if (problems.length) fail(problems.join('; '));
    await page.screenshot({ path: opt.screenshot, fullPage: true });
    log('screenshot ' + opt.screenshot);
  } catch (e) {
    if (page) {
      const shot = opt.screenshot.replace(/\.png$/, '') + '-failure.png';
      await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
      log('failure screenshot ' + shot);
    }
    throw e;
  } finally {
    await context.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().then(() => {
  log('PASS');
  process.exit(0);
}, (e) => {
  process.stderr.write('[dashboard_test] FAIL: ' + (e instanceof Failure ? e.message : (e && e.stack) || e) + '\n');
  process.exit(1);
});

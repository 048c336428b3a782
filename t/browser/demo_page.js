// Drives conf/html/index.html (the demo page scripts/run.sh serves) in Debian's Chromium as a
// person would: wait for the stream to open, publish with the form, read what the page shows.
// Prints one JSON object on stdout; exits non-zero when the page never opens its stream.
//   node demo_page.js http://127.0.0.1:PORT/
const { chromium } = require('playwright-core');

(async () => {
  const base = process.argv[2];
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    // The machine's network is closed: without these Chromium keeps trying to reach Google.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
           '--disable-component-update', '--disable-sync'],
  });
  const result = { errors: [] };
  try {
    const page = await browser.newPage();
    page.on('pageerror', (e) => result.errors.push(String(e)));
    await page.goto(base);
    await page.waitForFunction(() => document.getElementById('state').textContent === 'open', null, { timeout: 10000 });
    result.opened = true;

    // The form as it loads: channel "wallets", event "wallet.created", data {"id":7}.
    await page.click('button[type=submit]');
    await page.waitForFunction(() => document.querySelectorAll('#log div').length === 1, null, { timeout: 5000 });
    result.answer = await page.textContent('#answer');

    // An unnamed multi-line event to the other channel of the page's stream.
    await page.fill('#topic', 'users');
    await page.fill('#event', '');
    await page.fill('#data', 'line one\nline two');
    await page.click('button[type=submit]');
    await page.waitForFunction(() => document.querySelectorAll('#log div').length === 2, null, { timeout: 5000 });

    result.log = await page.$$eval('#log div', (lines) => lines.map((l) => l.textContent));
    result.state = await page.textContent('#state');
  } catch (e) {
    result.errors.push(String(e));
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(result));
  process.exit(result.opened ? 0 : 1);
})();

// A page in a real browser: Debian's Chromium, driven by playwright-core, loads a page that fills
// window.cors (t/39: an EventSource on another origin and a preflighted publish to it; t/40: a
// stream over TLS and HTTP/2) and waits until the page sets window.cors.done.
//   node cors_page.js http://127.0.0.1:PAGE_PORT/cors.html?api=http://127.0.0.1:API_PORT
// Prints one JSON object: {"opened":bool,"got":[[type,data],...],"publish_status":N|null,
//   "publish_error":string|null,"errors":N,"page_errors":[...]}
const { chromium } = require('playwright-core');

(async () => {
  const url = process.argv[2];
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    // The machine's network is closed: without these Chromium keeps trying to reach Google.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
           '--disable-component-update', '--disable-sync'],
  });
  // SSE_IGNORE_CERT: the page is served with a certificate made for the test.
  const result = { page_errors: [] };
  try {
    const context = await browser.newContext({ ignoreHTTPSErrors: Boolean(process.env.SSE_IGNORE_CERT) });
    const page = await context.newPage();
    page.on('pageerror', (e) => result.page_errors.push(String(e)));
    await page.goto(url);
    // The page opens its stream, publishes once it is open, and waits for the event to come back.
    try {
      await page.waitForFunction(() => window.cors && window.cors.done, null, { timeout: 8000, polling: 50 });
    } catch (e) {
      result.page_errors.push(String(e));
    }
    Object.assign(result, await page.evaluate(() => {
      if (window.cors.source) window.cors.source.close();
      const { opened, got, publish_status, publish_error, errors } = window.cors;
      return { opened, got, publish_status, publish_error, errors };
    }));
  } catch (e) {
    result.page_errors.push(String(e));
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(result));
})();

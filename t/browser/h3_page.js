// A page over HTTP/3: Debian's Chromium, driven by playwright-core, with QUIC forced for one
// origin (no Alt-Svc discovery, no fallback to TCP) and the test's certificate trusted by its
// public key's hash. The page fills window.h3 and sets window.h3.done (t/58).
//   SSE_QUIC_ORIGIN=127.0.0.1:PORT SSE_SPKI=<base64 sha256 of the certificate's SPKI> \
//     node h3_page.js https://127.0.0.1:PORT/h3.html
// Prints one JSON object: window.h3's report, and "page_errors":[...].
const { chromium } = require('playwright-core');

(async () => {
  const url = process.argv[2];
  const timeout = 1000 * Number(process.env.SSE_CLIENT_TIMEOUT || 30);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    // The machine's network is closed: without these Chromium keeps trying to reach Google.
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
           '--disable-component-update', '--disable-sync',
           '--enable-quic', `--origin-to-force-quic-on=${process.env.SSE_QUIC_ORIGIN}`,
           `--ignore-certificate-errors-spki-list=${process.env.SSE_SPKI}`],
  });
  const result = { page_errors: [] };
  try {
    const page = await browser.newPage();
    page.on('pageerror', (e) => result.page_errors.push(String(e)));
    await page.goto(url);
    try {
      await page.waitForFunction(() => window.h3 && window.h3.done, null, { timeout, polling: 50 });
    } catch (e) {
      result.page_errors.push(String(e));
    }
    Object.assign(result, await page.evaluate(() => window.h3.report()));
  } catch (e) {
    result.page_errors.push(String(e));
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(result));
})();

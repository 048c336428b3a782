// A real browser resuming a stream: Debian's Chromium, driven by playwright-core, loads a page whose
// EventSource collects every message's (lastEventId, data), every 'reset' event and every 'open'.
// The server ends the stream now and then; the browser reconnects by itself with Last-Event-ID.
//   node resume_page.js http://127.0.0.1:PORT/resume.html?topics=seq
// Prints "ready" once the stream first opened, then, once the page received the event whose data
// is "end" (or after SSE_CLIENT_TIMEOUT seconds, 60 by default), one JSON object:
//   {"got":[[id,data],...],"resets":[data,...],"opens":N,"open_at":[events received at each open],
//    "errors":N,"ended":bool,"page_errors":[...]}
// Exits non-zero when the stream never opened.
const { chromium } = require('playwright-core');

(async () => {
  const url = process.argv[2];
  const timeout = 1000 * Number(process.env.SSE_CLIENT_TIMEOUT || 60);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    // The machine's network is closed: without these Chromium keeps trying to reach Google.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
           '--disable-component-update', '--disable-sync'],
  });
  const result = { page_errors: [] };
  let opened = false;
  try {
    const page = await browser.newPage();
    page.on('pageerror', (e) => result.page_errors.push(String(e)));
    await page.goto(url);
    await page.waitForFunction(() => window.sse && window.sse.opens >= 1, null, { timeout: 15000 });
    opened = true;
    console.log('ready');
    try {
      await page.waitForFunction(() => window.sse.ended, null, { timeout, polling: 50 });
    } catch (e) {
      result.page_errors.push(String(e));
    }
    // Anything arriving after "end" would be a duplicate: give it a moment to show.
    await page.waitForTimeout(300);
    Object.assign(result, await page.evaluate(() => {
      window.sse.source.close();
      const { got, resets, opens, open_at, errors, ended } = window.sse;
      return { got, resets, opens, open_at, errors, ended };
    }));
  } catch (e) {
    result.page_errors.push(String(e));
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(result));
  process.exit(opened ? 0 : 1);
})();

// The `eventsource` npm package (a WHATWG EventSource for node, which sends Last-Event-ID when it
// reconnects) resuming a stream the server ends now and then. Same protocol as resume_page.js:
//   node resume_eventsource.js 'http://127.0.0.1:PORT/events?topics=seq'
// Prints "ready" once the stream first opened, then, once it received the event whose data is
// "end" (or after SSE_CLIENT_TIMEOUT seconds, 60 by default), one JSON object:
//   {"got":[[id,data],...],"resets":[data,...],"opens":N,"open_at":[events received at each open],
//    "errors":N,"ended":bool}
const { EventSource } = require('eventsource');

const url = process.argv[2];
const timeout = 1000 * Number(process.env.SSE_CLIENT_TIMEOUT || 60);
const state = { got: [], resets: [], opens: 0, open_at: [], errors: 0, ended: false };
const source = new EventSource(url);
let finished = false;

function finish() {
  if (finished) return;
  finished = true;
  source.close();
  console.log(JSON.stringify(state));
  process.exit(state.opens > 0 ? 0 : 1);
}

source.addEventListener('open', () => {
  state.opens++;
  state.open_at.push(state.got.length);
  if (state.opens === 1) console.log('ready');
});
source.addEventListener('error', () => { state.errors++; });
source.addEventListener('message', (e) => {
  state.got.push([e.lastEventId, e.data]);
  if (e.data === 'end' && !state.ended) {
    state.ended = true;
    // Anything arriving after "end" would be a duplicate: give it a moment to show.
    setTimeout(finish, 300);
  }
});
source.addEventListener('reset', (e) => { state.resets.push(e.data); });
setTimeout(finish, timeout);

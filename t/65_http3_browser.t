# HTTP/3 with a real browser, as docs/recipes.md's recipe writes it: nginx listens with "quic" (UDP)
# and "ssl" (TCP) on one port, and Debian's Chromium, with QUIC forced for that origin, loads a page
# whose EventSource and fetch() calls all run over HTTP/3. The page publishes over HTTP/3, ends its
# streams with a DELETE on sse_clients, publishes while its EventSource is away, and resumes with
# Last-Event-ID. What arrived is compared, bytes and ids, with what was published. Skipped on an
# nginx without HTTP/3 (before 1.25, or built without --with-http_v3_module): scripts/test.sh runs
# it in the version matrix's leg of nginx built from ../shared/nginx.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP;
use MIME::Base64 qw(decode_base64);
use SSETest;
use SSEExpect qw(frames first_difference);

my $info = SSETest::nginx_info();
plan skip_all => "nginx $info->{version} has no HTTP/3 (it needs 1.25 or later, built with --with-http_v3_module)"
    unless $info->{version_number} >= 1025000 && $info->{modules}{http_v3};

my $t = SSETest->new(extra_ports => 1, http => <<'HTTP', server => <<'CONF');
    log_format proto '$request_method $uri $server_protocol $status "$http_last_event_id"';
    server {
        listen 127.0.0.1:%%PORT1%% quic reuseport;
        listen 127.0.0.1:%%PORT1%% ssl;
        ssl_certificate %%DIR%%/cert.pem;
        ssl_certificate_key %%DIR%%/key.pem;
        add_header Alt-Svc 'h3=":%%PORT1%%"; ma=86400' always;
        access_log %%DIR%%/logs/h3.log proto;
        location = /events {
            sse_subscribe $arg_topics;
            sse_retry 1500ms;
            sse_heartbeat off;
        }
        location = /pub {
            sse_publish $arg_topic;
            sse_history 100;
        }
        location = /clients { sse_clients; }
        location / { root %%DIR%%/html; }
    }
HTTP
        location = /stats { sse_stats; }
CONF
my $dir = $t->dir;
system('openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
       '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1',
       '-keyout', "$dir/key.pem", '-out', "$dir/cert.pem") == 0 or die "openssl failed";
chmod 0644, "$dir/key.pem", "$dir/cert.pem";
# Chromium trusts the certificate by the base64 SHA-256 of its SubjectPublicKeyInfo.
my $spki = `openssl x509 -in $dir/cert.pem -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64`;
chomp $spki;
die "no SPKI hash" unless $spki =~ m{^[A-Za-z0-9+/]{43}=$};

mkdir "$dir/html" or die $!;
chmod 0755, "$dir/html";
open my $fh, '>', "$dir/html/h3.html" or die $!;
print $fh <<'HTML';
<!doctype html>
<meta charset="utf-8">
<title>h3</title>
<script>
  // [data, event name]: published by this page, in three rounds.
  const first = [['one', null], ['two: \u00e9t\u00e9 \u2713', null], ['three\nlines\nhere', 'note']];
  const missed = [['four', null], ['five\n\nafter an empty line', null], ['six', 'note']];
  const h3 = window.h3 = { got: [], opens: 0, errors: 0, replies: [], raw: {}, disconnect: null, done: false, error: null };
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  async function until(cond, what) {
    for (const end = Date.now() + 15000; !cond(); await sleep(20)) {
      if (Date.now() > end) throw new Error('timed out waiting for ' + what);
    }
  }
  // A stream read with fetch(): its exact bytes, until the server ends it or the page aborts it.
  function rawStream(name, headers) {
    const r = h3.raw[name] = { chunks: [], text: '', status: null, ended: false, error: null };
    const abort = new AbortController();
    r.abort = () => abort.abort();
    r.finished = (async () => {
      try {
        const resp = await fetch('/events?topics=h3', { headers, signal: abort.signal, cache: 'no-store' });
        r.status = resp.status;
        const reader = resp.body.getReader();
        const decoder = new TextDecoder();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) { r.ended = true; break; }
          r.chunks.push(value);
          r.text += decoder.decode(value, { stream: true });
        }
      } catch (e) {
        if (e.name !== 'AbortError') r.error = String(e);
      }
    })();
    return r;
  }
  async function publish([data, name]) {
    const resp = await fetch('/pub?topic=h3' + (name ? '&event=' + name : ''), { method: 'POST', body: data });
    const reply = { status: resp.status, body: await resp.text(), data, name };
    h3.replies.push(reply);
    return JSON.parse(reply.body).id;
  }
  h3.report = () => {
    const bytes = (r) => r ? btoa(r.chunks.map((c) => String.fromCharCode(...c)).join('')) : null;
    const raw = {};
    for (const [name, r] of Object.entries(h3.raw)) raw[name] = { bytes: bytes(r), status: r.status, ended: r.ended, error: r.error };
    const protocols = performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))
      .map((e) => [new URL(e.name).pathname, e.nextHopProtocol]);
    const { got, opens, errors, replies, disconnect, error } = h3;
    return { got, opens, errors, replies, disconnect, error, raw, protocols };
  };
  (async () => {
    try {
      const source = new EventSource('/events?topics=h3');
      source.onopen = () => { h3.opens++; };
      source.onerror = () => { h3.errors++; };
      const received = (e) => { h3.got.push([e.type, e.lastEventId, e.data]); };
      source.onmessage = received;
      source.addEventListener('note', received);
      const a = rawStream('first', {});
      await until(() => h3.opens === 1 && a.status !== null, 'both streams to open');
      let last;
      for (const e of first) last = await publish(e);
      await until(() => h3.got.length === first.length && a.text.includes('data: here\n\n'), 'the first events');
      // The server ends both streams; the EventSource comes back after its retry (1.5 s) with
      // Last-Event-ID, and is given what it missed from the channel's history.
      const del = await fetch('/clients?channel=h3', { method: 'DELETE' });
      h3.disconnect = { status: del.status, body: await del.text() };
      await until(() => a.ended && h3.errors === 1, 'the streams to end');
      for (const e of missed) await publish(e);
      // A second fetch() resumes from the same place, to see the replay's bytes.
      const b = rawStream('resumed', { 'Last-Event-ID': last });
      await until(() => h3.opens === 2 && b.status !== null, 'the streams to resume');
      await publish(['end', null]);
      await until(() => h3.got.some((g) => g[2] === 'end') && b.text.includes('data: end\n\n'), 'the last event');
      source.close();
      b.abort();
      await Promise.all([a.finished, b.finished]);
    } catch (e) {
      h3.error = String(e);
    }
    h3.done = true;
  })();
</script>
HTML
close $fh;
chmod 0644, "$dir/html/h3.html";
$t->start;

END { local $?; $t->stop if $t }

my $origin = '127.0.0.1:' . $t->port(1);
$ENV{SSE_CLIENT_TIMEOUT} = $ENV{SSE_SANITIZED} ? 60 : 30;
my $out = `cd $FindBin::Bin/browser && SSE_QUIC_ORIGIN=$origin SSE_SPKI='$spki' node h3_page.js 'https://$origin/h3.html' 2>&1`;
my ($line) = grep {/^\{/} split /\n/, $out;
my $r = eval { decode_json($line // '') } || {};
is_deeply($r->{page_errors}, [], 'no page errors') or diag($out);
is($r->{error}, undef, 'the page went through every step');
if (!$r->{replies}) {    # the page did not load: nothing more to look at
    $t->finish;
    done_testing;
    exit;
}

# The publishes, made by the page over HTTP/3.
my @replies = @{ $r->{replies} || [] };
is(scalar @replies, 7, 'the page published 7 events');
is(scalar(grep { $_->{status} == 202 } @replies), scalar @replies, 'each publish answered 202') or diag explain \@replies;
my @ids = map { (eval { decode_json($_->{body}) } || {})->{id} // '' } @replies;
is(scalar(grep { $ids[$_] > $ids[$_ - 1] } 1 .. $#ids), $#ids, 'published ids increase');
# [id, the exact frame (UTF-8 bytes), ...] of each, as SSETest::publish_event returns them.
my @events = map {
    my $data = $replies[$_]{data};
    utf8::encode($data);
    [$ids[$_], SSEExpect::frame($ids[$_], $data, $replies[$_]{name})]
} 0 .. $#replies;

# The EventSource: every event once, in order, with its id and name, across the server's close.
my @want = map { [$replies[$_]{name} // 'message', $ids[$_], $replies[$_]{data}] } 0 .. $#replies;
my $ok = is_deeply($r->{got}, \@want, 'the EventSource received every event once, in order, with its id and name');
diag(first_difference($r->{got} || [], \@want, sub { encode_json($_[0]) }) // '') unless $ok;
is($r->{opens}, 2, 'it opened twice: once, and once more after the server ended its stream');
is($r->{disconnect}{status} . ' ' . $r->{disconnect}{body}, qq(200 {"disconnected":2}\n), 'DELETE on sse_clients ended both streams');

# The bytes of the streams read with fetch().
my $pre = ":ok\nretry: 1500\n\n";
my $first = $r->{raw}{first} || {};
is($first->{status}, 200, 'first stream: 200');
ok($first->{ended}, 'first stream: ended by the server');
is(decode_base64($first->{bytes} // ''), $pre . frames(@events[0 .. 2]), 'first stream: exactly the preamble and the first 3 frames');
my $resumed = $r->{raw}{resumed} || {};
is($resumed->{status}, 200, 'resumed stream: 200');
is(decode_base64($resumed->{bytes} // ''), $pre . frames(@events[3 .. 6]),
   'resumed stream (Last-Event-ID of the third): exactly the preamble, the 3 missed frames and the last');

# Everything ran over HTTP/3: the browser says so, and so does nginx.
my @protocols = @{ $r->{protocols} || [] };
ok(scalar(grep { $_->[0] eq '/h3.html' } @protocols), 'the browser lists the page among its entries') or diag explain \@protocols;
is(scalar(grep { $_->[1] ne 'h3' } @protocols), 0, "every request's nextHopProtocol is h3") or diag explain \@protocols;
my $st = $t->stats_until({subscribers => 0}, 10);
is($st->{subscribers}, 0, 'the streams are gone once the browser closed them');
cmp_ok($st->{events_replayed}, '>=', 6, 'stats: both resumed streams were replayed the 3 missed events');
$t->stop;
open my $lf, '<', "$dir/logs/h3.log" or die $!;
my @log = <$lf>;
close $lf;
chomp @log;
is(scalar(grep { !m{^\S+ \S+ HTTP/3\.0 } } @log), 0, 'the access log has HTTP/3.0 on every line') or diag explain \@log;
my @streams = sort grep { m{^GET /events } } @log;
is_deeply(\@streams, [sort(('GET /events HTTP/3.0 200 "-"') x 2, (qq(GET /events HTTP/3.0 200 "$ids[2]")) x 2)],
          'four streams: two new, two resumed with the id of the third event')
    or diag explain \@log;

$t->finish;
done_testing;

# TLS and HTTP/2 with a real browser: Debian's Chromium (driven by playwright-core) loads a page
# over https from nginx listening with "ssl http2" and a certificate made for the test; its
# EventSource stream runs over HTTP/2 and receives what is published, byte-exact data and ids.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP;
use SSETest;

my $t = SSETest->new(extra_ports => 1, http => <<'HTTP', server => <<'CONF');
    log_format proto '$request_method $uri $server_protocol $status';
    server {
        listen 127.0.0.1:%%PORT1%% ssl http2;
        ssl_certificate %%DIR%%/cert.pem;
        ssl_certificate_key %%DIR%%/key.pem;
        access_log %%DIR%%/logs/tls.log proto;
        location = /events {
            sse_subscribe $arg_topics;
        }
        location / { root %%DIR%%/html; }
    }
HTTP
        location = /pub { sse_publish $arg_topic; }
CONF
my $dir = $t->dir;
system('openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1',
       '-keyout', "$dir/key.pem", '-out', "$dir/cert.pem") == 0 or die "openssl failed";
chmod 0644, "$dir/key.pem", "$dir/cert.pem";
mkdir "$dir/html" or die $!;
chmod 0755, "$dir/html";
open my $fh, '>', "$dir/html/tls.html" or die $!;
print $fh <<'HTML';
<!doctype html>
<meta charset="utf-8">
<title>tls</title>
<script>
  window.cors = { opened: false, got: [], publish_status: null, publish_error: null, errors: 0, done: false };
  const source = new EventSource('/events?topics=tls');
  window.cors.source = source;
  source.onopen = () => { window.cors.opened = true; };
  source.onerror = () => { window.cors.errors++; };
  source.onmessage = (e) => {
    window.cors.got.push([e.lastEventId, e.data]);
    if (e.data === 'end') window.cors.done = true;
  };
</script>
HTML
close $fh;
chmod 0644, "$dir/html/tls.html";
$t->start;

END { local $?; $t->stop if $t }

# The browser: cors_page.js drives any page that fills window.cors and sets done; it trusts the
# test's certificate through SSE_IGNORE_CERT.
my $pid = open my $out, '-|', "cd $FindBin::Bin/browser && SSE_IGNORE_CERT=1 node cors_page.js "
                            . "'https://127.0.0.1:" . $t->port(1) . "/tls.html' 2>&1" or die "node: $!";
ok(SSETest::wait_until(sub { -s "$dir/logs/tls.log" && `cat $dir/logs/tls.log` =~ /GET \/tls.html/ }, 10),
   'the browser loaded the page over https');
# Publish once the stream is registered.
ok(SSETest::wait_until(sub { $t->channel_state('/pub?topic=tls')->{subscribers} }, 10), 'its stream is registered');
my @data = ('one', "two: \x{e9}t\x{e9}", 'end');    # characters; published as UTF-8
my @sent = map { my $bytes = $_; utf8::encode($bytes); $t->publish_event('/pub?topic=tls', $bytes) } @data;
my $result = do { local $/; <$out> };
close $out;
my ($line) = grep {/^\{/} split /\n/, $result;
my $r = eval { decode_json($line // '') } || {};
ok($r->{opened}, 'the EventSource opened over TLS') or diag($result);
is_deeply($r->{got}, [map { [$sent[$_][0], $data[$_]] } 0 .. $#data], 'it received every event, with its id and data');
is_deeply($r->{page_errors}, [], 'no page errors');
open my $lf, '<', "$dir/logs/tls.log" or die $!;
my @log = <$lf>;
close $lf;
ok((grep { m{^GET /events HTTP/2\.0 200$} } @log), 'the stream ran over HTTP/2');

$t->finish;
done_testing;

# CORS, as docs/recipes.md's recipe writes it, checked in Debian's Chromium: a page from an allowed
# origin opens an EventSource on the API's origin and publishes to it with fetch() and a custom
# header (the browser sends a preflight OPTIONS first, answered 204); the event comes back on the
# stream. A page from another origin gets neither: the browser blocks both.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP;
use SSETest;

# Port 0 serves the allowed page, port 1 is the API, port 2 serves a page from a foreign origin.
my $t = SSETest->new(extra_ports => 2, http => <<'HTTP', server => <<'CONF');
    log_format cors '$request_method $uri $status';
    map $http_origin $cors_origin {
        default "";
        "http://127.0.0.1:%%PORT%%" $http_origin;    # the origins allowed to use the API
    }
    server {
        listen 127.0.0.1:%%PORT1%%;
        access_log %%DIR%%/logs/api.log cors;
        location = /events {
            sse_subscribe $arg_topics;
            add_header Access-Control-Allow-Origin $cors_origin always;
        }
        location = /publish {
            if ($request_method = OPTIONS) {
                add_header Access-Control-Allow-Origin $cors_origin;
                add_header Access-Control-Allow-Methods "POST";
                add_header Access-Control-Allow-Headers "Content-Type, X-SSE-Event";
                add_header Access-Control-Max-Age 600;
                return 204;
            }
            add_header Access-Control-Allow-Origin $cors_origin always;
            sse_publish $arg_topic;
        }
    }
    server {
        listen 127.0.0.1:%%PORT2%%;
        location / { root %%DIR%%/html; }
    }
HTTP
        location / { root %%DIR%%/html; }
CONF
my $dir = $t->dir;
mkdir "$dir/html" or die $!;
chmod 0755, "$dir/html";
open my $fh, '>', "$dir/html/cors.html" or die $!;
print $fh <<'HTML';
<!doctype html>
<meta charset="utf-8">
<title>cors</title>
<script>
  const api = new URLSearchParams(location.search).get('api');
  window.cors = { opened: false, got: [], publish_status: null, publish_error: null, errors: 0, done: false };
  const source = new EventSource(api + '/events?topics=cors');
  window.cors.source = source;
  source.addEventListener('greeting', (e) => { window.cors.got.push([e.type, e.data]); window.cors.done = true; });
  // A blocked cross-origin stream fails for good: one error, no retry.
  source.onerror = () => { window.cors.errors++; if (!window.cors.opened) window.cors.done = true; };
  source.onopen = async () => {
    window.cors.opened = true;
    try {
      const res = await fetch(api + '/publish?topic=cors', { method: 'POST', headers: { 'X-SSE-Event': 'greeting' },
                                                             body: 'hello from another origin' });
      window.cors.publish_status = res.status;
    } catch (e) {
      window.cors.publish_error = String(e);
      window.cors.done = true;
    }
  };
</script>
HTML
close $fh;
chmod 0644, "$dir/html/cors.html";
$t->start;

END { local $?; $t->stop if $t }

{
    my $api = 'http://127.0.0.1:' . $t->port(1);
    my $run = sub {
        my ($page_port) = @_;
        my $out = `cd $FindBin::Bin/browser && node cors_page.js 'http://127.0.0.1:$page_port/cors.html?api=$api' 2>&1`;
        my ($line) = grep {/^\{/} split /\n/, $out;
        return (eval { decode_json($line // '') } || {raw => $out});
    };

    my $ok = $run->($t->port(0));
    ok($ok->{opened}, 'allowed origin: the cross-origin EventSource opens') or diag explain $ok;
    is($ok->{publish_status}, 202, 'allowed origin: the cross-origin publish (after its preflight) is accepted');
    is_deeply($ok->{got}, [['greeting', 'hello from another origin']], 'allowed origin: the event comes back on the stream');
    is_deeply($ok->{page_errors}, [], 'allowed origin: no page errors');
    open my $lf, '<', "$dir/logs/api.log" or die $!;
    my @log = <$lf>;
    close $lf;
    ok((grep { m{^OPTIONS /publish 204$} } @log), 'the browser sent a preflight, answered 204');
    ok((grep { m{^POST /publish 202$} } @log), 'then the POST, answered 202');

    my $foreign = $run->($t->port(2));
    ok(!$foreign->{opened}, 'foreign origin: the browser does not let the stream open');
    cmp_ok($foreign->{errors} // 0, '>=', 1, 'foreign origin: the page loaded and its EventSource failed');
    is($foreign->{publish_status}, undef, 'foreign origin: nothing was published');
}

$t->finish;
done_testing;

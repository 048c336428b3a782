# Publishing as a subrequest: a public location mirrors its request body to an internal publish
# location; the subscriber gets exactly the body as the event's data. The internal location
# cannot be reached from outside.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use File::Temp qw(tempdir);
use SSETest;

# Workers run as an unprivileged user when nginx starts as root, and the harness's
# client_body_temp_path lies inside its private (0700) directory: a large body needs a
# temporary directory those workers can write to.
my $bodydir = tempdir('sse-body-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0777, $bodydir;

# The mirror runs in the precontent phase, so the main request needs a content handler (a
# `return` would answer in the rewrite phase, before the mirror): it is proxied to a dummy
# location.
my $t = SSETest->new(server => <<"CONF")->start;
        client_max_body_size 1m;
        client_body_temp_path $bodydir;
        location = /events {
            sse_subscribe \$arg_topics;
            sse_heartbeat off;
        }
        location = /orders {
            mirror /internal/publish;
            mirror_request_body on;
            proxy_pass http://127.0.0.1:%%PORT%%/dummy;
        }
        location = /dummy {
            return 200 "accepted\n";
        }
        location = /internal/publish {
            internal;
            sse_publish orders;
        }
        location = /pub {
            sse_publish \$arg_topic;
        }
        location = /stats {
            sse_stats;
        }
CONF

sub stats { $t->get_json('/stats') }

my $s = $t->subscribe('/events?topics=orders');
is($s->wait_body(5), ":ok\n\n", 'subscriber of orders is open');

my $body = '{"order":42,"items":[{"sku":"A-1","qty":2}],"note":"caf' . "\xc3\xa9 \xe2\x98\x83" . '"}';    # UTF-8 bytes
my $r = $t->request('POST', '/orders', body => $body, headers => {'Content-Type' => 'application/json'});
is($r->{status}, 200, 'POST /orders: 200 from the main request');
is($r->{body}, "accepted\n", 'POST /orders: the main request\'s own answer');

my @ev = $s->events(1, 5);
is(scalar @ev, 1, 'the subscriber got one event');
is($ev[0]{data}, $body, 'the event data is exactly the POSTed body');
like($ev[0]{id} // '', qr/^\d+$/, 'the event has an id');
is($ev[0]{frame}, "id: $ev[0]{id}\ndata: $body\n\n", 'exact frame bytes, no event name');
my $first_id = $ev[0]{id};

# Multi-line JSON and an event name through the main request's X-SSE-Event header.
my $pretty = "{\n  \"order\": 43,\n  \"state\": \"paid\"\n}";
$r = $t->request('POST', '/orders', body => $pretty,
                 headers => {'Content-Type' => 'application/json', 'X-SSE-Event' => 'order.paid'});
is($r->{status}, 200, 'second POST /orders: 200');
@ev = $s->events(2, 5);
is(scalar @ev, 2, 'the subscriber got a second event');
is($ev[1]{frame}, "id: $ev[1]{id}\nevent: order.paid\ndata: {\ndata:   \"order\": 43,\ndata:   \"state\": \"paid\"\ndata: }\n\n",
   'multi-line body: one data line per line, the event name from X-SSE-Event');
cmp_ok($ev[1]{id}, '>', $first_id, 'ids increase');

# A body larger than client_body_buffer_size: nginx buffers it to a temporary file.
my $big = '{"blob":"' . ('0123456789abcdef' x 1500) . '"}';
$r = $t->request('POST', '/orders', body => $big, headers => {'Content-Type' => 'application/json'});
is($r->{status}, 200, 'POST /orders with a 24 KB body: 200');
@ev = $s->events(3, 5);
is(scalar @ev, 3, 'the subscriber got a third event');
my $want_big = "id: " . ($ev[2]{id} // '') . "\ndata: $big\n\n";
ok(($ev[2]{frame} // '') eq $want_big, 'the 24 KB body (buffered to a file) arrives exactly')
    or diag('got ' . length($ev[2]{frame} // '') . ' bytes, want ' . length($want_big));

$s->drain(0.3);
is(scalar($s->events), 3, 'exactly one event per POST, no more');
is($s->body, ":ok\n\n" . join('', map { $_->{frame} } @ev), 'exact stream bytes');

my $ch = $t->get_json('/pub?topic=orders');
is($ch->{events_published}, 3, 'the orders channel has 3 events published');
is($ch->{last_event_id}, $ev[2]{id}, 'the orders channel\'s last event id');

# The internal location from outside: 404, and nothing is published.
for my $m (qw(POST GET DELETE)) {
    my $x = $t->request($m, '/internal/publish', body => ($m eq 'POST' ? 'sneaky' : ''));
    is($x->{status}, 404, "$m /internal/publish from outside: 404");
}
$s->drain(0.3);
is(scalar($s->events), 3, 'the refused direct requests published nothing');
is($t->get_json('/pub?topic=orders')->{events_published}, 3, 'events_published still 3');
is(stats()->{events_published}, 3, '/stats events_published == 3');

$s->close;
$t->finish;
done_testing;

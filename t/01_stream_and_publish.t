# One subscriber and one publish: the stream's headers and the exact bytes of the event.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use SSETest;

my $t = SSETest->new(server => <<'CONF')->start;
        location = /events {
            sse_subscribe $arg_topics;
            sse_heartbeat 30s;
            sse_retry 3s;
        }
        location = /internal/publish {
            allow 127.0.0.1; deny all;
            sse_publish $arg_topic;
        }
CONF

my $s = $t->subscribe('/events?topics=wallets,users', no_accept => 1);
is($s->status, 200, 'stream answers 200 without an Accept header');
is($s->header('Content-Type'), 'text/event-stream', 'Content-Type');
is($s->header('Cache-Control'), 'no-cache', 'Cache-Control');
is($s->header('X-Accel-Buffering'), 'no', 'X-Accel-Buffering');
ok(!defined $s->header('Content-Length'), 'no Content-Length');
is($s->header('Transfer-Encoding'), 'chunked', 'HTTP/1.1 stream is chunked');
is($s->wait_body(length ":ok\nretry: 3000\n\n"), ":ok\nretry: 3000\n\n", 'stream opens at once with a comment and retry');

my $r = $t->publish('/internal/publish?topic=wallets&event=wallet.created', '{"id":7}');
is($r->{events}, 1, 'publish reports one event');
is($r->{subscribers}, 1, 'publish reports one subscriber reached');
like($r->{id}, qr/^\d+$/, 'publish reports the id');

my @ev = $s->events(1);
is(scalar @ev, 1, 'one event arrived');
is($ev[0]{frame}, "id: $r->{id}\nevent: wallet.created\ndata: {\"id\":7}\n\n", 'exact event bytes');
is($s->body, ":ok\nretry: 3000\n\n" . "id: $r->{id}\nevent: wallet.created\ndata: {\"id\":7}\n\n", 'exact stream bytes');

my $r2 = $t->publish('/internal/publish?topic=users', 'second');
cmp_ok($r2->{id}, '>', $r->{id}, 'ids increase');
@ev = $s->events(2);
is($ev[1]{frame}, "id: $r2->{id}\ndata: second\n\n", 'unnamed event has no event: line');

my $state = $t->get_json('/internal/publish?topic=wallets');
is_deeply($state, {channel => 'wallets', subscribers => 1, last_event_id => $r->{id}, events_published => 1,
                   retained => 1, oldest_id => $r->{id}, newest_id => $r->{id}},
          'GET on the publish location reports the channel');

$s->close;
$t->finish;
done_testing;

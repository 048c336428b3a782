# nginx's own limits around our locations, as docs/recipes.md's recipe writes them: limit_conn per
# address on the stream location (the slot is held for the stream's life and freed when it
# ends) and limit_req on the publish location (a burst beyond the rate is refused with 429).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use SSETest;

my $t = SSETest->new(http => <<'HTTP', server => <<'CONF')->start;
    limit_conn_zone $binary_remote_addr zone=sse_per_ip:1m;
    limit_req_zone $binary_remote_addr zone=publishers:1m rate=5r/s;
HTTP
        location = /events {
            sse_subscribe $arg_topics;
            limit_conn sse_per_ip 3;             # streams per client address
            sse_heartbeat off;
        }
        location = /publish {
            limit_req zone=publishers burst=5 nodelay;
            limit_req_status 429;
            sse_publish $arg_topic;
        }
        location = /stats {
            sse_stats;
        }
CONF

END { local $?; $t->stop if $t }

my $PRE = ":ok\n\n";

# limit_conn: three streams from 127.0.0.1, the fourth refused (nginx's 503), admitted again
# once one leaves.
my @s = map { $t->subscribe('/events?topics=nl') } 1 .. 3;
is($_->wait_body(5), $PRE, 'a stream within limit_conn opens') for @s;
my $r = $t->request('GET', '/events?topics=nl');
is($r->{status}, 503, 'the 4th stream from the same address: 503 from limit_conn');
is($t->stats->{subscribers}, 3, 'and it was not subscribed');
like($t->error_log, qr/limiting connections by zone "sse_per_ip"/, 'nginx logs the refusal');
(shift @s)->close;
$t->stats_until({subscribers => 2}, 5);
my $again;
ok(SSETest::wait_until(sub { $again = $t->subscribe('/events?topics=nl'); $again->status == 200 }, 5),
   'a stream that ended frees its limit_conn slot');
is($again->wait_body(5), $PRE, 'the new stream opens');

# limit_req: 5 r/s with a burst of 5: a quick run of 12 publishes gets some 429s, every 202 is
# delivered, and nothing refused is.
my (@ok, $refused);
for my $i (1 .. 12) {
    my $p = $t->request('POST', '/publish?topic=nl', body => "n$i");
    if ($p->{status} == 202) { push @ok, "n$i" } elsif ($p->{status} == 429) { $refused++ }
}
cmp_ok(scalar @ok, '>=', 6, 'the burst is accepted (' . scalar(@ok) . ' of 12)');
cmp_ok($refused // 0, '>=', 1, 'beyond it, 429 from limit_req');
is(scalar(@ok) + ($refused // 0), 12, 'every publish is either accepted or refused with 429');
my @ev = $again->events(scalar @ok, 5);
is_deeply([map { $_->{data} } @ev], \@ok, 'the stream gets exactly the accepted events, in order');
is($t->stats->{events_published}, scalar @ok, 'refused publishes published nothing');

$_->close for @s, $again;
$t->allow_log(qr/limiting (connections|requests)/);
$t->finish;
done_testing;

# Events a replay is still writing stay valid when memory pressure evicts them from history:
# a resuming client that does not read keeps its replay pinned while other publishes evict
# every retained event of its channel; when it reads, it gets the whole replay byte for byte.
# Afterwards the evicted events are freed (events_stored == events_retained). Under the
# sanitizer pass any use of freed zone memory fails the test through error.log.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use SSETest;
use SSEExpect qw(frame);

# Port 1: a fixed 32k socket send buffer, so most of the replay waits in nginx, pinned.
my $locations = <<'CONF';
        location = /events {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
            sse_send_buffer 16m;
        }
        location = /pub {
            sse_publish $arg_topic;
            sse_history 100000;
        }
        location = /stats {
            sse_stats;
        }
CONF
my $t = SSETest->new(extra_ports => 1, http => <<"CONF", server => $locations)->start;
    sse_shm_size 256k;
    server {
        listen 127.0.0.1:%%PORT1%% sndbuf=32k;
$locations
    }
CONF

END { local $?; $t->stop if $t }

sub payload { my ($ch, $n) = @_; return "$ch-$n " . ('y' x 1000) }

# Channel p: 100 events of 1 KB, all retained.
my @p = map { $t->publish_event('/pub?topic=p', payload('p', $_)) } 1 .. 100;
my $state = $t->channel_state('/pub?topic=p');
is($state->{retained}, 100, 'p retains its 100 events');
is($t->stats->{history_evictions}, 0, 'nothing evicted yet');

# A client resumes from before p's first event and does not read: 100 KB of replay, most of it
# held by nginx, its events pinned.
my $s = $t->resume('/events?topics=p', $p[0][0] - 1, port => $t->port(1), rcvbuf => 4096);
is($s->status, 200, 'the resuming stream opens');
is($t->stats->{events_replayed}, 100, 'its replay is the 100 events');

# Channel q: 300 events of 1 KB in a 256k zone evict everything p retains.
my $refused = 0;
for my $n (1 .. 300) {
    my $r = $t->request('POST', '/pub?topic=q', body => payload('q', $n));
    $refused++ unless $r->{status} == 202;
}
is($refused, 0, 'every publish to q is accepted');
$state = $t->channel_state('/pub?topic=p');
is($state->{retained}, 0, 'p retains nothing any more');
my $st = $t->stats;
cmp_ok($st->{history_evictions}, '>=', 100, 'p\'s 100 events were evicted (and some of q\'s)');
cmp_ok($st->{events_stored}, '>', $st->{events_retained}, 'evicted events the replay still writes are still stored');

# Now the client reads: the whole replay, byte for byte.
my $want = ":ok\n\n" . join '', map { $_->[1] } @p;
my $body = $s->wait_body(length $want, 10);
is(length $body, length $want, 'the client receives the whole replay');
ok($body eq $want, 'byte for byte, though every event of it was evicted meanwhile');

# Once written, the evicted events are freed (collection is lazy: one more publish).
$t->publish_event('/pub?topic=q', 'collect');
$st = $t->stats_until({events_stored => $t->stats->{events_retained}}, 5);
is($st->{events_stored}, $st->{events_retained}, 'written and evicted: freed (events_stored == events_retained)');

# The stream is live after its replay.
my $live = $t->publish_event('/pub?topic=p', 'live');
is($s->wait_body(length($want) + length($live->[1]), 5), $want . $live->[1], 'then live');
$s->close;

$t->allow_log(qr/\[warn\].*shared zone full, evicted/);
$t->finish;
done_testing;

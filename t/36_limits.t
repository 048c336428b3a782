# Limits, counted over all workers: sse_max_subscribers refuses the next stream with 503 and
# Retry-After, sse_max_subscribers_per_key with 429; each admits again once a stream leaves, and
# a refused request is not counted. sse_max_lifetime ends streams cleanly within [lifetime -
# jitter, lifetime], and the client resumes exactly with Last-Event-ID.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use SSETest;
use SSEExpect qw(frames);

my $t = SSETest->new(spread => 1, server => <<'CONF')->start;
        sse_heartbeat off;
        location = /events {
            sse_subscribe $arg_topics;
        }
        location = /capped {
            sse_subscribe $arg_topics;
            sse_max_subscribers 4;
        }
        location = /per-user {
            sse_subscribe $arg_topics;
            sse_max_subscribers_per_key $arg_user 2;
        }
        location = /short {
            sse_subscribe $arg_topics;
            sse_max_lifetime 1s 500ms;
        }
        location = /pub {
            sse_publish $arg_topic;
        }
        location = /stats {
            sse_stats;
        }
CONF

END { local $?; $t->stop if $t }

my $PRE = ":ok\n\n";
my $n = 0;
sub open_stream {    # over both listeners; which worker takes it is up to nginx and the kernel
    my ($path) = @_;
    my $s = $t->subscribe($path, port => $t->port($n++ % 2));
    return $s;
}

# --- sse_max_subscribers 4: counts every stream of the zone ------------------------------------
my @s = $t->subscribe_spread('/events?topics=l-any', '/events?topics=l-any', '/capped?topics=l-cap',
                             '/capped?topics=l-cap');
is($_->wait_body(5), $PRE, 'stream opens') for @s;
my $st = $t->stats_until({subscribers => 4}, 5);
is(scalar(grep { $_->{subscribers} > 0 } @{ $st->{workers} }), 2, 'the 4 streams are on both workers');
my $r = $t->request('GET', '/capped?topics=l-cap', port => $t->port(1));
is($r->{status}, 503, 'the 5th stream: 503');
is($r->{headers}{'retry-after'}, '5', 'with Retry-After: 5');
is($r->{body}, "too many subscribers: the limit of 4 streams is reached\n", 'and the reason');
like($t->error_log, qr/\[warn\].*sse: stream refused: sse_max_subscribers 4 reached/, 'a warn line');
$st = $t->stats;
is($st->{subscribers}, 4, 'the refused request is not counted');
is($st->{refused_max_subscribers}, 1, 'refused_max_subscribers == 1');
(shift @s)->close;
$t->stats_until({subscribers => 3}, 5);
my $again = open_stream('/capped?topics=l-cap');
is($again->wait_body(5), $PRE, 'once a stream leaves, the next is admitted');
$_->close for @s, $again;
$t->stats_until({subscribers => 0}, 5);

# --- sse_max_subscribers_per_key $arg_user 2 ---------------------------------------------------
my @alice = $t->subscribe_spread(('/per-user?topics=l-u&user=alice') x 2);    # one on each worker
is($_->wait_body(5), $PRE, 'alice opens a stream') for @alice;
$r = $t->request('GET', '/per-user?topics=l-u&user=alice');
is($r->{status}, 429, "alice's 3rd stream: 429");
is($r->{headers}{'retry-after'}, '5', 'with Retry-After: 5');
is($r->{body}, "too many streams for this client: at most 2\n", 'and the reason');
like($t->error_log, qr/\[info\].*sse: stream refused: key "alice" already holds sse_max_subscribers_per_key 2/,
     'an info line');
my $bob = open_stream('/per-user?topics=l-u&user=bob');
is($bob->wait_body(5), $PRE, 'bob is not limited by alice');
my @anon = map { open_stream('/per-user?topics=l-u') } 1 .. 3;
is($_->wait_body(5), $PRE, 'a request with an empty key is not limited') for @anon;
$st = $t->stats;
is($st->{subscribers}, 6, '6 streams counted');
is($st->{refused_per_key}, 1, 'refused_per_key == 1');
(shift @alice)->close;
$t->stats_until({subscribers => 5}, 5);
my $alice3 = open_stream('/per-user?topics=l-u&user=alice');
is($alice3->wait_body(5), $PRE, 'once one of alice\'s streams leaves, she is admitted again');
$_->close for @alice, $alice3, $bob, @anon;
$st = $t->stats_until({subscribers => 0}, 5);
is($st->{subscribers}, 0, 'everyone left');

# --- sse_max_lifetime 1s 500ms: clean ends, spread out, then an exact resume --------------------
my @short = map { open_stream('/short?topics=l-life') } 1 .. 6;
my $t0 = time;
is($_->wait_body(5), $PRE, 'short-lived stream opens') for @short;
my $e1 = $t->publish_event('/pub?topic=l-life', 'before the end');
my @ended;
for my $s (@short) {
    ok($s->wait_eof(3), 'the stream ends by itself');
    push @ended, time - $t0;
    ok($s->ended_cleanly, 'cleanly (terminating chunk, then close)');
    is($s->body, $PRE . $e1->[1], 'after the event published before');
}
my @late = grep { $_ > 1.6 } @ended;
my @early = grep { $_ < 0.4 } @ended;
is(scalar(@late) + scalar(@early), 0, 'every stream ended between 0.5 s and 1 s (allowing for timers): '
   . join(' ', map { sprintf '%.2f', $_ } @ended));
like($t->error_log, qr/\[info\].*sse: stream reached sse_max_lifetime, ending it/, 'an info line says why');
my $missed = $t->publish_event('/pub?topic=l-life', 'while away');
my $back = $t->resume('/short?topics=l-life', $e1->[0]);
is($back->wait_body(length($PRE . $missed->[1]), 5), $PRE . $missed->[1], 'the client resumes exactly');
$back->close;

$t->finish;
done_testing;

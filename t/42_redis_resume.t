# Resuming on another node through Redis: a stream that read 10 events on node A, went away while
# 20 more were published, and comes back to node B with Last-Event-ID (or ?last_event_id=) gets
# exactly those 20, byte for byte, then live events from every node; also when B never had a
# stream on that channel (B reads the history from Redis first), when the missed events came
# from two nodes, and with a history bound (the Redis list is trimmed; an older id is reset).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use SSETest;
use SSERedis;
use SSEExpect qw(frame frames reset_frame first_difference);

my $locations = <<'CONF';
        location = /events {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
        }
        location = /pub {
            sse_publish $arg_topic;
            sse_history 100;
        }
        location = /pub10 {
            sse_publish $arg_topic;
            sse_history 10;
        }
        location = /stats {
            sse_stats;
        }
CONF

my $redis = SSERedis->new;
my @nodes = $redis->nodes(3, server => $locations);
my ($A, $B, $C) = @nodes;
END { local $?; SSERedis::diag_unfinished(@nodes); $_->stop for grep { defined } @nodes; $redis->stop if $redis }

my $PRE = ":ok\n\n";

ok(SSERedis::wait_connected($_), 'node :' . $_->port . ' is connected to Redis') for @nodes;

sub body_is {
    my ($s, $want, $label) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    $s->wait_body(length $want, 10);
    $s->drain(0.3) if length($s->body) == length $want;
    return is($s->body, $want, $label);
}

my @shapes = (
    ['plain', undef],
    ['{"k":"named"}', 'order.created'],
    ["multi\nline\n\nwith an empty line", undef],
    ['', 'empty.data'],
    ["caf\xc3\xa9", 'x.y'],
);

sub pub {
    my ($node, $channel, $tag, $i, $loc) = @_;
    my $sh = $shapes[$i % @shapes];
    return $node->publish_event('/' . ($loc // 'pub') . "?topic=$channel", "$tag $i $sh->[0]", $sh->[1]);
}

# A stream on $channel at $node reads 10 events published on $node, then leaves; returns the
# last id it saw.
sub read_ten_and_leave {
    my ($node, $channel) = @_;
    my $s = $node->subscribe("/events?topics=$channel");
    my @first = map { pub($node, $channel, 'first', $_) } 1 .. 10;
    body_is($s, $PRE . frames(@first), "$channel: the first 10 events, exactly");
    my @e = $s->events;
    is($e[-1]{id}, $first[-1][0], "$channel: the last id seen is the 10th event's");
    $s->close;
    return $first[-1][0];
}

# --- (3a) resume on B, which has a stream on the channel all along --------------------------------
{
    my $keep = $B->subscribe('/events?topics=r1');
    ok($redis->wait_numsub('sse:r1', 1), 'r1: B is subscribed in Redis');
    my $last = read_ten_and_leave($A, 'r1');
    my @missed = map { pub($A, 'r1', 'missed', $_) } 1 .. 20;
    my $x = $B->resume('/events?topics=r1', $last);
    is($x->status, 200, 'r1: the resume on B answers 200');
    my $want = $PRE . frames(@missed);
    body_is($x, $want, '(3a) resume on B by Last-Event-ID: exactly the 20 missed events, no reset');

    my $la = pub($A, 'r1', 'live from A', 1);
    $x->wait_body(length($want) + length($la->[1]), 10);
    my $lb = pub($B, 'r1', 'live from B', 2);
    $want .= $la->[1] . $lb->[1];
    body_is($x, $want, '(3a) then the live events of A and of B');
    my @kept = $keep->events(32, 10);
    is(scalar @kept, 32, 'r1: the stream B held all along got all 32 events');
    is(SSERedis::wait_value(sub { $redis->llen('sse:r1') }, 32, 5), 32, 'r1: the Redis list sse:r1 holds the 32 events');
    $x->close;
    $keep->close;
}

# --- (3b) resume on C, which never had a stream on the channel ------------------------------------
{
    my $last = read_ten_and_leave($A, 'r2');
    my @missed = map { pub($A, 'r2', 'missed', $_) } 1 .. 20;
    my $t0 = time;
    my $x = $C->resume('/events?topics=r2', $last);
    my $head = time - $t0;
    is($x->status, 200, 'r2: the resume on C answers 200');
    cmp_ok($head, '<', 1.0, sprintf('(3b) the response head comes at once (%.3f s)', $head));
    my $want = $PRE . frames(@missed);
    body_is($x, $want, '(3b) resume on C (no stream there before): exactly the 20 missed events, read from Redis');
    my $la = pub($A, 'r2', 'live from A', 1);
    $x->wait_body(length($want) + length($la->[1]), 10);
    my $lc = pub($C, 'r2', 'live from C', 2);
    $want .= $la->[1] . $lc->[1];
    body_is($x, $want, '(3b) then the live events of A and of C');
    $x->close;
}

# --- (3c) by ?last_event_id=, on B, which never had a stream on the channel -----------------------
{
    my $last = read_ten_and_leave($A, 'r3');
    my @missed = map { pub($A, 'r3', 'missed', $_) } 1 .. 20;
    my $x = $B->subscribe("/events?topics=r3&last_event_id=$last");
    is($x->status, 200, 'r3: the resume on B answers 200');
    my $want = $PRE . frames(@missed);
    body_is($x, $want, '(3c) resume on B by ?last_event_id=: exactly the 20 missed events');
    my $la = pub($A, 'r3', 'live from A', 1);
    $want .= $la->[1];
    body_is($x, $want, '(3c) then the live event of A');
    $x->close;
}

# --- (3d) the missed events came from two nodes ---------------------------------------------------
{
    my $last = read_ten_and_leave($A, 'r4');
    my (@missed, %origin);
    for my $i (1 .. 20) {
        my $n = $i % 2 ? $A : $B;
        my $ev = pub($n, 'r4', ($i % 2 ? 'A' : 'B') . ' missed', $i);
        push @missed, $ev;
        $origin{ $ev->[0] } = [$i % 2 ? 'A' : 'B', $ev];
    }
    # Let both nodes' events reach Redis before the resume.
    is(SSERedis::wait_value(sub { $redis->llen('sse:r4') }, 30, 5), 30, 'r4: the Redis list holds the 30 events');
    my $x = $C->resume('/events?topics=r4', $last);
    my @got = $x->events(20, 10);
    $x->drain(0.3);
    @got = $x->events;
    is(scalar @got, 20, '(3d) resume on C: 20 events');
    my %seen;
    is(scalar(grep { $seen{ $_->{id} }++ } @got), 0, '(3d) none twice');
    is(scalar(grep { !$origin{ $_->{id} } || $_->{frame} ne $origin{ $_->{id} }[1][1] } @got), 0,
       '(3d) each one of the missed events, exact bytes');
    for my $tag ('A', 'B') {
        my @want = map { $_->[0] } grep { $origin{ $_->[0] }[0] eq $tag } @missed;
        my @mine = map { $_->{id} } grep { $origin{ $_->{id} } && $origin{ $_->{id} }[0] eq $tag } @got;
        my $d = first_difference(\@mine, \@want);
        ok(!defined $d, "(3d) the 10 events of $tag in ${tag}'s publish order") or diag($d);
    }
    ok(!grep({ ($_->{event} // '') eq 'reset' } @got), '(3d) no reset');
    $x->close;
}

# --- (3e) a history of 10: Redis keeps 10, an older id is reset, a recent one resumes exactly -----
{
    my @ev = map { pub($A, 'r5', 'bounded', $_, 'pub10') } 1 .. 15;
    is(SSERedis::wait_value(sub { $redis->llen('sse:r5') }, 10, 5), 10, '(3e) the Redis list sse:r5 is trimmed to 10');
    my $x = $C->resume('/events?topics=r5', $ev[1][0]);
    body_is($x, $PRE . reset_frame($ev[1][0], 'evicted') . frames(@ev[5 .. 14]),
            '(3e) resume on C from the 2nd of 15 with history 10: reset (evicted), then the 10 retained');
    $x->close;
    my $y = $B->resume('/events?topics=r5', $ev[9][0]);
    body_is($y, $PRE . frames(@ev[10 .. 14]), '(3e) resume on B from the 10th: exactly the 5 after it');
    $y->close;
}

$_->finish for @nodes;
done_testing;

# Redis goes away for 5 s while node A keeps publishing (one event every ~100 ms): A's own
# streams get every event at once; the publish replies say "queued" while Redis is away; when
# Redis is back on the same port, node B's streams get the queued events in order, none missing,
# none twice; each node logs the loss and the return once, not per attempt. A node whose queue
# (sse_redis_queue) overflows during an outage drops the oldest events and counts them. Then nginx
# nodes started while Redis is down begin fanning out when it starts, without a restart.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use POSIX ();
use JSON::PP;
use SSETest;
use SSERedis;
use SSEExpect qw(frame frames first_difference);

my $locations = <<'CONF';
        location = /events {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
        }
        location = /pub {
            sse_publish $arg_topic;
            sse_history 1000;
        }
        location = /stats {
            sse_stats;
        }
CONF

my $redis = SSERedis->new;
my $port = $redis->port;
# E keeps at most 5 events for Redis (sse_redis_queue 5).
my @nodes = ($redis->nodes(2, server => $locations), $redis->nodes(1, server => $locations, http => "    sse_redis_queue 5;\n"));
my ($A, $B, $E) = @nodes;
my $redis2 = SSERedis->new(start => 0);
my @late;
END { local $?; SSERedis::diag_unfinished(@nodes, @late); $_->stop for grep { defined } @nodes, @late; $_->stop for grep { defined } $redis, $redis2 }

my $PRE = ":ok\n\n";

sub body_is {
    my ($s, $want, $label, $timeout) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    $s->wait_body(length $want, $timeout // 10);
    $s->drain(0.3) if length($s->body) == length $want;
    return is($s->body, $want, $label);
}

# The node's error.log lines about Redis at notice level or above, each as [level, pid, text].
sub redis_lines {
    my ($node) = @_;
    my @l;
    for (split /\n/, $node->error_log) {
        my ($level, $pid, $text) = /\[(notice|warn|error|crit|alert|emerg)\] (\d+)#\d+: (?:\*\d+ )?(.*sse: redis.*)$/ or next;
        push @l, [$level, $pid, $text];
    }
    return @l;
}

# Of @lines, those whose text matches $re, counted per worker pid.
sub per_pid {
    my ($re, @lines) = @_;
    my %n;
    $n{ $_->[1] }++ for grep { $_->[2] =~ $re } @lines;
    return \%n;
}

ok(SSERedis::wait_connected($_), 'node :' . $_->port . ' is connected to Redis') for @nodes;

# --- (5) a 5 s outage while A publishes every ~100 ms ----------------------------------------------
{
    my $a1 = $A->subscribe('/events?topics=o1');
    my $b1 = $B->subscribe('/events?topics=o1');
    ok($redis->wait_numsub('sse:o1', 2), 'PUBSUB NUMSUB sse:o1 is 2');

    # The publisher: a child POSTing to A, logging "n status id redis time" per reply.
    my $log = $A->dir . '/publisher.log';
    my $count = 110;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open my $fh, '>', $log or POSIX::_exit(2);
        $fh->autoflush(1);
        for my $n (1 .. $count) {
            my $r = eval { $A->request('POST', '/pub?topic=o1', body => "event $n") };
            my $j = $r && $r->{status} == 202 ? eval { decode_json($r->{body}) } : undef;
            printf $fh "%d %d %s %s %.6f\n", $n, $r ? $r->{status} : 0, $j ? $j->{id} : '-',
                $j ? $j->{redis} // 'none' : '-', time;
            sleep 0.1;
        }
        close $fh;
        POSIX::_exit(0);
    }

    # Meanwhile: read A's stream (noting when each event arrives), stop Redis at ~1 s, start it
    # again on the same port 5 s later, and look at the figures in between.
    my $t0 = time;
    my ($stopped_at, $started_at, %arrived, @mid_a, @mid_b);
    my $done = 0;
    while (!$done || time < $t0 + 1) {
        my $n = scalar $a1->events;
        $a1->events($n + 1, 0.05);
        my $now = time;
        $arrived{ $_->{id} } //= $now for $a1->events;
        $done = 1 if waitpid($pid, POSIX::WNOHANG()) == $pid;
        if (!$stopped_at && $now - $t0 >= 1.0) {
            $redis->stop;
            $stopped_at = time;
            diag(sprintf 'Redis stopped at %.2f s', $stopped_at - $t0);
        }
        if ($stopped_at && !@mid_a && $now - $stopped_at >= 3.0) {
            @mid_a = ($A->stats->{redis});
            @mid_b = ($B->stats->{redis});
        }
        if ($stopped_at && !$started_at && $now - $stopped_at >= 5.0) {
            $redis->start;
            $started_at = time;
            diag(sprintf 'Redis started again at %.2f s', $started_at - $t0);
        }
        last if time > $t0 + 30;
    }
    ok($done, 'the publisher finished');

    my @pubs = map { [split] } do { open my $fh, '<', $log or die $!; <$fh> };
    is(scalar @pubs, $count, "$count publishes were made");
    is(scalar(grep { $_->[1] == 202 } @pubs), $count, 'every publish was answered 202');
    my @ev = map { [$_->[2], frame($_->[2], "event $_->[0]")] } @pubs;
    my $want = $PRE . frames(@ev);

    # Redis state in the publish replies.
    my @before = grep { $_->[4] < $stopped_at } @pubs;
    my @down = grep { $_->[4] > $stopped_at + 0.5 && $_->[4] < $started_at } @pubs;
    my @after = grep { $_->[4] > $started_at + 4.5 } @pubs;
    cmp_ok(scalar @down, '>=', 30, 'at least 30 publishes while Redis was away (' . scalar(@down) . ')');
    cmp_ok(scalar @after, '>=', 3, 'publishes after Redis was back (' . scalar(@after) . ')');
    my $replies = sub { join ' ', map { sprintf '%d:%s@%.2f', $_->[0], $_->[3], $_->[4] - $t0 } @pubs };
    is_deeply([map { $_->[3] } @before], [('forwarded') x @before], 'replies before the outage: "redis":"forwarded"')
        or diag($replies->());
    is_deeply([map { $_->[3] } @down], [('queued') x @down], 'replies while Redis was away: "redis":"queued"')
        or diag($replies->());
    is_deeply([map { $_->[3] } @after], [('forwarded') x @after], 'replies once Redis is back: "forwarded" again')
        or diag($replies->());
    my $queued = grep { $_->[3] eq 'queued' } @pubs;

    # Stats in the middle of the outage.
    isnt($mid_a[0]{state}, 'connected', "A's stats during the outage: state $mid_a[0]{state}");
    isnt($mid_b[0]{state}, 'connected', "B's stats during the outage: state $mid_b[0]{state}");
    cmp_ok($mid_a[0]{queue}, '>', 0, "A's stats during the outage: queue $mid_a[0]{queue}");

    # A's stream: everything, in order, at once.
    body_is($a1, $want, "A's stream: all $count events, in order, exactly");
    my @late_ones = grep { !defined $arrived{ $_->[2] } || $arrived{ $_->[2] } - $_->[4] > 1.0 } @pubs;
    is(scalar @late_ones, 0, "A's stream got each event within 1 s of its publish, during the outage too")
        or diag(join "\n", map { sprintf 'event %d: published %.2f, arrived %s', $_->[0], $_->[4] - $t0,
                                 defined $arrived{ $_->[2] } ? sprintf('%.2f', $arrived{ $_->[2] } - $t0) : 'never' } @late_ones[0 .. 4]);

    # B's stream: all of them too, the queued ones after the return, in order, none twice.
    $b1->events($count, 20);
    body_is($b1, $want, "B's stream: all $count events, in A's order, none missing, none twice", 5);
    my $diff = first_difference([map { $_->{id} } $b1->events], [map { $_->[0] } @ev]);
    diag("B's stream, ids: $diff") if defined $diff;

    ok(SSERedis::wait_connected($_), 'node :' . $_->port . ' is connected again') for @nodes;
    ok($redis->wait_numsub('sse:o1', 2), 'both nodes subscribed sse:o1 again');
    ok($redis->wait_clients(6), 'CLIENT LIST: 6 sse- clients again (A, B, E)');
    my $sa = $A->stats->{redis};
    is_deeply([@$sa{qw(state queue queue_dropped)}], ['connected', 0, 0], "A's stats after: connected, queue 0, nothing dropped");
    cmp_ok($sa->{reconnects}, '>=', 1, "A's stats: reconnects $sa->{reconnects}");

    # Fan-out goes on both ways.
    my $e1 = $B->publish_event('/pub?topic=o1', 'from B after the outage');
    is($e1->[2]{redis}, 'forwarded', 'a publish on B after the outage: forwarded');
    $want .= $e1->[1];
    body_is($a1, $want, "A's stream gets B's event");
    body_is($b1, $want, "B's stream gets it once");
    $a1->close;
    $b1->close;

    # The logs: each state change once per worker, not per attempt.
    for my $n ([A => $A, $queued], [B => $B, 0]) {
        my ($name, $node, $m) = @$n;
        my @l = redis_lines($node);
        my $lost = per_pid(qr/^sse: redis connection to 127\.0\.0\.1:$port lost: .+; queueing events and reconnecting$/, @l);
        my $back = per_pid(qr/^sse: redis reconnected to 127\.0\.0\.1:$port after \d+ attempts?; sending \d+ queued events?$/, @l);
        my $unreach = per_pid(qr/^sse: redis at 127\.0\.0\.1:$port unreachable: .+; retrying$/, @l);
        my $show = join "\n", map { "  [$_->[0]] $_->[1]: $_->[2]" } @l;
        is_deeply([values %$lost], [1], "$name: one 'lost' line") or diag($show);
        is_deeply([values %$back], [1], "$name: one 'reconnected' line") or diag($show);
        # The first failed attempt of the outage is logged, once, however many attempts fail.
        is_deeply([values %$unreach], [1], "$name: one 'unreachable' line for the failed attempts of the outage") or diag($show);
        my ($sending) = map { /sending (\d+) queued/ ? $1 : () } map { $_->[2] } @l;
        # Besides the events answered "queued", those on their way when Redis went (answered
        # "forwarded", not yet acknowledged) are sent again: a few at most.
        ok(defined $sending && $sending >= $m && $sending <= $m + 3,
           "$name: the 'reconnected' line says it sends $m queued events, or up to 3 more in flight (" .
               ($sending // 'none') . ')');
        my ($lvl_lost) = map { $_->[0] } grep { $_->[2] =~ /lost:/ } @l;
        is($lvl_lost, 'warn', "$name: the 'lost' line is a warn");
        cmp_ok(scalar @l, '<=', 6, "$name: at most 6 notice-or-worse Redis lines in all (" . scalar(@l) . ')') or diag($show);
    }
}

# --- (5b) a short outage on a node whose queue holds 5: the oldest give way ---------------------
{
    my $e1 = $E->subscribe('/events?topics=qd');
    my $b2 = $B->subscribe('/events?topics=qd');
    ok($redis->wait_numsub('sse:qd', 2), '(5b) PUBSUB NUMSUB sse:qd is 2 (E and B)');
    my $st0 = $E->stats->{redis};
    $redis->stop;
    ok(SSERedis::wait_state($E, 'disconnected', 5), '(5b) E noticed the outage');
    my @ev = map { $E->publish_event('/pub?topic=qd', "qd $_") } 1 .. 8;
    is_deeply([map { $_->[2]{redis} } @ev], [('queued') x 8], '(5b) the 8 publishes on E: "queued"');
    body_is($e1, $PRE . frames(@ev), "(5b) E's own stream gets all 8 at once");
    my $st = $E->stats->{redis};
    is($st->{queue}, 5, '(5b) stats: E queue 5');
    is($st->{queue_dropped} - $st0->{queue_dropped}, 3, '(5b) stats: E queue_dropped grew by 3');
    my @full = SSERedis::log_lines($E, qr/\[warn\] .*sse: redis queue full \(sse_redis_queue 5\), dropped the oldest \d+ events?\b/);
    is(scalar @full, 1, "(5b) E logged the overflow once") or diag(join "\n", SSERedis::log_lines($E, qr/sse: redis/));
    $redis->start;
    ok(SSERedis::wait_connected($_), '(5b) node :' . $_->port . ' is connected again') for @nodes;
    body_is($b2, $PRE . frames(@ev[3 .. 7]), "(5b) B's stream gets the 5 events E kept (4 to 8), in order, once");
    my @back = SSERedis::log_lines($E, qr/sse: redis reconnected to .* sending 5 queued events$/);
    is(scalar @back, 1, "(5b) E's 'reconnected' line says it sends 5 queued events");
    is($E->stats->{redis}{queue}, 0, '(5b) stats: E queue 0 again');
    $e1->close;
    $b2->close;
}

# --- (6) nginx started while Redis is down; Redis starts later ------------------------------------
{
    my $port2 = $redis2->port;
    @late = $redis2->nodes(2, server => $locations);
    my ($C, $D) = @late;
    sleep 1.5;
    for my $n (@late) {
        my $st = $n->stats->{redis};
        ok($st->{state} eq 'connecting' || $st->{state} eq 'disconnected', "a node started without Redis: state $st->{state}");
    }
    # Local service works meanwhile.
    my $c1 = $C->subscribe('/events?topics=q6');
    my $e0 = $C->publish_event('/pub?topic=q6', 'before Redis exists');
    is($e0->[2]{redis}, 'queued', 'a publish before Redis starts: "redis":"queued"');
    body_is($c1, $PRE . $e0->[1], "C's own stream gets it at once");

    $redis2->start;
    my $t0 = time;
    ok(SSERedis::wait_connected($_, 10), 'node :' . $_->port . ' connects once Redis starts') for @late;
    diag(sprintf 'both connected %.2f s after Redis started', time - $t0);
    ok($redis2->wait_clients(4), 'CLIENT LIST: 4 sse- clients');
    is(SSERedis::wait_value(sub { $redis2->llen('sse:q6') }, 1, 5), 1, 'the event queued before Redis started is in its history');

    my $d1 = $D->subscribe('/events?topics=q6');
    ok($redis2->wait_numsub('sse:q6', 2), 'PUBSUB NUMSUB sse:q6 is 2');
    my $e1 = $C->publish_event('/pub?topic=q6', 'C to D');
    # Each node delivers a channel's events in the order they reach it: D's own would overtake
    # C's if published before C's has crossed (docs/redis.md's limits), so wait for it.
    $d1->wait_body(length($PRE . $e1->[1]), 10);
    my $e2 = $D->publish_event('/pub?topic=q6', 'D to C');
    my $want_c = $PRE . $e0->[1];
    is($e1->[2]{redis}, 'forwarded', 'publish on C: forwarded');
    body_is($d1, $PRE . frames($e1, $e2), "D's stream gets C's event, then its own");
    my @got = $c1->events(3, 10);
    $c1->drain(0.3);
    is_deeply([map { $_->{id} } $c1->events], [$e0->[0], $e1->[0], $e2->[0]], "C's stream gets its own event, then D's");
    $c1->close;
    $d1->close;

    for my $n (@late) {
        my @l = redis_lines($n);
        my $unreach = per_pid(qr/^sse: redis at 127\.0\.0\.1:$port2 unreachable: .+; retrying$/, @l);
        my $show = join "\n", map { "  [$_->[0]] $_->[1]: $_->[2]" } @l;
        is_deeply([values %$unreach], [1], "one 'unreachable' line for the attempts before Redis started") or diag($show);
        cmp_ok(scalar @l, '<=', 4, 'at most 4 notice-or-worse Redis lines (' . scalar(@l) . ')') or diag($show);
    }
}

$_->finish for @nodes, @late;
done_testing;

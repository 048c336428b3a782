# Cross-node fan-out through a real Redis: three nginx nodes (2 workers each) share one
# redis-server (two over TCP, one over its unix socket). A publish on any node reaches every subscriber on every node once, with the same
# id and the same bytes; 500 events published alternately on two nodes arrive complete, each once,
# in each node's publish order; one FCALL sse_publish from another service reaches every node; a
# node unsubscribes in Redis when its last stream of a channel leaves.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
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
        }
        location = /stats {
            sse_stats;
        }
CONF

my $redis = SSERedis->new(unixsocket => 1);
# spread: port(1) is a reuseport listener, so that streams land on both workers of a node.
# A and B reach Redis over TCP (redis://127.0.0.1:PORT), C over its unix socket (unix:/path).
my @nodes = ($redis->nodes(2, spread => 1, server => $locations),
             $redis->nodes(1, spread => 1, server => $locations, url => $redis->unix_url));
my ($A, $B, $C) = @nodes;
END { local $?; SSERedis::diag_unfinished(@nodes); $_->stop for grep { defined } @nodes; $redis->stop if $redis }

my $PRE = ":ok\n\n";

ok(SSERedis::wait_connected($_), 'node :' . $_->port . ' is connected to Redis') for @nodes;

# Each node: exactly one worker holds two connections, sse-sub-<pid> and sse-cmd-<pid>.
ok($redis->wait_clients(6), 'CLIENT LIST: 6 sse- clients (2 per node)');
my %names = map { $_ => 1 } $redis->client_names;
for my $n (@nodes) {
    my @owners = grep { $names{"sse-sub-$_"} && $names{"sse-cmd-$_"} } $n->worker_pids;
    is(scalar @owners, 1, 'node :' . $n->port . ': exactly one worker holds sse-sub-<pid> and sse-cmd-<pid>')
        or diag(join ' ', sort keys %names);
}

for my $n (@nodes) {
    my $r = $n->stats->{redis};
    is_deeply([@$r{qw(state queue queue_dropped)}], ['connected', 0, 0], 'stats redis: connected, queue 0, dropped 0')
        or diag explain $r;
}

# Waits until the stream's body is exactly $want (or 10 s pass), then a little longer for anything
# extra (a duplicate) on its way.
sub body_is {
    my ($s, $want, $label) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    $s->wait_body(length $want, 10);
    $s->drain(0.3) if length($s->body) == length $want;
    return is($s->body, $want, $label);
}

# Several streams at once: each body must be exactly its want ([stream, want, label] each); one
# short wait for anything extra on its way serves them all.
sub bodies_are {
    my @checks = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    $_->[0]->wait_body(length $_->[1], 10) for @checks;
    my $end = time + 0.3;
    while (time < $end) { $_->[0]->drain(0.01) for @checks }
    is($_->[0]->body, $_->[1], $_->[2]) for @checks;
}

# Opens streams on every node for $path (one per worker, both workers of each node) and waits until
# Redis has each node subscribed to the channels. Returns the streams, node by node.
sub streams_everywhere {
    my ($path, @channels) = @_;
    my @s = map { [$_->subscribe_spread($path, $path)] } @nodes;
    ok($redis->wait_numsub("sse:$_", scalar @nodes), "PUBSUB NUMSUB sse:$_ is " . scalar(@nodes)) for @channels;
    return @s;
}

sub node_name { my ($n) = @_; return $n == $A ? 'A' : $n == $B ? 'B' : 'C' }

# --- (1) a publish on A reaches every stream of A, B and C once, in order, same id and bytes -----
{
    my @per_node = streams_everywhere('/events?topics=f1', 'f1');
    my $st0 = {map { node_name($_) => $_->stats->{redis} } @nodes};
    my @ev = (
        $A->publish_event('/pub?topic=f1', 'plain event'),
        $A->publish_event('/pub?topic=f1', '{"k":"named"}', 'order.created'),
        $A->publish_event('/pub?topic=f1', "multi\nline\n\nwith an empty line"),
        $A->publish_event('/pub?topic=f1', "caf\xc3\xa9 in UTF-8", 'x.y'),
    );
    is($_->[2]{redis}, 'forwarded', 'publish reply: "redis":"forwarded"') for @ev;
    like($_->[0], qr/^\d{19}$/, "the id $_->[0] has 19 digits") for @ev;
    ok((SSERedis::id_cmp($ev[$_ - 1][0], $ev[$_][0]) < 0), "ids increase within A's publishes ($_)") for 1 .. $#ev;
    my $want = $PRE . frames(@ev);
    bodies_are(map { my $name = node_name($nodes[$_]);
                     map { [$_, $want, "(1) node $name: the 4 events, once each, in order, same ids, exact bytes"] } @{ $per_node[$_] } }
               0 .. $#nodes);
    # Figures: A sent 4 events to Redis; C (no publish of its own) received 4 from it.
    my $sa = $A->stats->{redis};
    my $sc = $C->stats->{redis};
    is($sa->{events_sent} - $st0->{A}{events_sent}, 4, 'stats: A events_sent grew by 4');
    is($sc->{events_received} - $st0->{C}{events_received}, 4, 'stats: C events_received grew by 4');
    is($sc->{events_sent} - $st0->{C}{events_sent}, 0, 'stats: C events_sent did not grow');

    # The same from C and from B, one event each, interleaved with A.
    my @more = ($C->publish_event('/pub?topic=f1', 'from C'));
    $_->[0]->wait_body(length($want) + length($more[0][1]), 10) for @per_node;
    push @more, $B->publish_event('/pub?topic=f1', 'from B', 'b');
    $want .= frames(@more);
    bodies_are(map { my $name = node_name($nodes[$_]);
                     map { [$_, $want, "(1) node $name: then the events of C and B, exactly"] } @{ $per_node[$_] } }
               0 .. $#nodes);
    $_->close for map { @$_ } @per_node;
}

# --- (2) 500 events published alternately on A and B: all, once each, each node's order ---------
{
    my @per_node = streams_everywhere('/events?topics=f2', 'f2');
    my (%by_id, @from_a, @from_b);
    my $t0 = time;
    for my $i (1 .. 500) {
        my ($node, $list, $tag) = $i % 2 ? ($A, \@from_a, 'A') : ($B, \@from_b, 'B');
        my $ev = $node->publish_event('/pub?topic=f2', "$tag $i" . ($i % 7 ? '' : "\nsecond line"), $i % 5 ? undef : 'every.fifth');
        push @$list, $ev;
        $by_id{ $ev->[0] } = [$tag, $ev];
    }
    diag(sprintf '500 publishes took %.1f s', time - $t0);
    is(scalar keys %by_id, 500, '(2) 500 distinct ids');
    my $mono = 1;
    for my $l (\@from_a, \@from_b) {
        for my $i (1 .. $#$l) { $mono = 0 if SSERedis::id_cmp($l->[$i - 1][0], $l->[$i][0]) >= 0 }
    }
    ok($mono, "(2) ids increase within each node's publishes");

    for my $i (0 .. $#nodes) {
        my $name = node_name($nodes[$i]);
        for my $s (@{ $per_node[$i] }) {
            my @got = $s->events(500, 30);
            $s->drain(0.3);
            @got = $s->events;
            is(scalar @got, 500, "(2) node $name: 500 events");
            my %seen;
            my @dups = grep { $seen{ $_->{id} }++ } @got;
            is(scalar @dups, 0, "(2) node $name: no event twice");
            my @unknown = grep { !$by_id{ $_->{id} } } @got;
            is(scalar @unknown, 0, "(2) node $name: no unknown id");
            my @bad = grep { $by_id{ $_->{id} } && $_->{frame} ne $by_id{ $_->{id} }[1][1] } @got;
            is(scalar @bad, 0, "(2) node $name: every frame exact") or diag explain [@bad[0 .. ($#bad < 2 ? $#bad : 2)]];
            for my $tag ('A', 'B') {
                my @mine = grep { $by_id{ $_->{id} } && $by_id{ $_->{id} }[0] eq $tag } @got;
                my $want = $tag eq 'A' ? \@from_a : \@from_b;
                my $diff = first_difference([map { $_->{id} } @mine], [map { $_->[0] } @$want]);
                ok(!defined $diff, "(2) node $name: all 250 events of $tag, in ${tag}'s publish order") or diag($diff);
            }
            ok(!$s->eof, "(2) node $name: the stream is still open");
        }
    }
    $_->close for map { @$_ } @per_node;
}

# --- (4) one Redis command from another service reaches every node -------------------------------
{
    my @per_node = streams_everywhere('/events?topics=news', 'news');
    my $id1 = $redis->cli('FCALL', 'sse_publish', 1, 'sse:news', 'hello world');
    like($id1, qr/^\d+$/, "FCALL sse_publish 1 sse:news 'hello world' answers an id ($id1)");
    my $want = $PRE . "id: $id1\ndata: hello world\n\n";
    bodies_are(map { my $name = node_name($nodes[$_]);
                     map { [$_, $want, "(4) node $name: exactly id + data: hello world"] } @{ $per_node[$_] } }
               0 .. $#nodes);
    my $id2 = $redis->cli('FCALL', 'sse_publish', 1, 'sse:news', '{"x":1}', 'greeting');
    like($id2, qr/^\d+$/, "FCALL with an event name answers an id ($id2)");
    isnt($id2, $id1, 'a new id');
    my $id3 = $redis->cli('FCALL', 'sse_publish', 1, 'sse:news', "line 1\nline 2");
    like($id3, qr/^\d+$/, "FCALL with two lines of data answers an id ($id3)");
    $want .= "id: $id2\nevent: greeting\ndata: {\"x\":1}\n\n" . "id: $id3\ndata: line 1\ndata: line 2\n\n";
    bodies_are(map { my $name = node_name($nodes[$_]);
                     map { [$_, $want, qq{(4) node $name: then event: greeting + data: {"x":1}, then two data lines}] } @{ $per_node[$_] } }
               0 .. $#nodes);
    # An HTTP publish after them continues the same stream, once.
    my $after = $B->publish_event('/pub?topic=news', 'after the FCALLs');
    $want .= $after->[1];
    bodies_are(map { my $name = node_name($nodes[$_]);
                     map { [$_, $want, "(4) node $name: then an HTTP publish of B"] } @{ $per_node[$_] } }
               0 .. $#nodes);
    $_->close for map { @$_ } @per_node;

    # Several channels in one call: a stream on both gets the event once.
    my @a = map { $_->subscribe('/events?topics=fa') } @nodes;
    my @b = map { $_->subscribe('/events?topics=fb') } @nodes;
    my @ab = map { $_->subscribe('/events?topics=fa,fb') } @nodes;
    ok($redis->wait_numsub("sse:$_", 3), "PUBSUB NUMSUB sse:$_ is 3") for 'fa', 'fb';
    my $id4 = $redis->cli('FCALL', 'sse_publish', 2, 'sse:fa', 'sse:fb', 'to both');
    like($id4, qr/^\d+$/, "FCALL sse_publish 2 sse:fa sse:fb answers an id ($id4)");
    my $w = $PRE . "id: $id4\ndata: to both\n\n";
    bodies_are((map { [$a[$_], $w, '(4) node ' . node_name($nodes[$_]) . ': a stream on fa gets it'] } 0 .. 2),
               (map { [$b[$_], $w, '(4) node ' . node_name($nodes[$_]) . ': a stream on fb gets it'] } 0 .. 2),
               (map { [$ab[$_], $w, '(4) node ' . node_name($nodes[$_]) . ': a stream on fa,fb gets it once'] } 0 .. 2));
    $_->close for @a, @b, @ab;
}

# --- (8) a node whose last stream of a channel leaves unsubscribes in Redis ----------------------
{
    my $sa = $A->subscribe('/events?topics=u8');
    my $sb = $B->subscribe('/events?topics=u8');
    ok($redis->wait_numsub('sse:u8', 2), '(8) PUBSUB NUMSUB sse:u8 is 2 (A and B)');
    my $e1 = $A->publish_event('/pub?topic=u8', 'to A and B');
    body_is($sb, $PRE . $e1->[1], '(8) B receives it');
    my $channels_b = $B->stats->{redis}{channels};

    $sb->close;
    ok($redis->wait_numsub('sse:u8', 1), '(8) B left: PUBSUB NUMSUB sse:u8 is 1');
    is($B->stats->{redis}{channels}, $channels_b - 1, '(8) stats: B uses one Redis channel fewer');
    my $recv_b = $B->stats->{redis}{events_received};
    my $e2 = $A->publish_event('/pub?topic=u8', 'to A only');
    body_is($sa, $PRE . $e1->[1] . $e2->[1], '(8) A still gets the next event');
    sleep 0.5;
    is($B->stats->{redis}{events_received}, $recv_b, '(8) B received nothing more from Redis');

    $sa->close;
    ok($redis->wait_numsub('sse:u8', 0), '(8) A left too: PUBSUB NUMSUB sse:u8 is 0');
    ok($redis->wait_numsub("sse:$_", 0), "(8) every earlier channel is unsubscribed too: sse:$_") for qw(f1 f2 news fa fb);
}

# The connections stayed as they were: 2 per node.
is($redis->client_count, 6, 'CLIENT LIST: still 6 sse- clients');
$_->finish for @nodes;
done_testing;

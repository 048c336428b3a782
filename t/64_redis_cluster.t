# Redis Cluster (issue 11, item 3): 3 primaries and 3 replicas (t/lib/SSECluster.pm) and two nginx
# nodes (2 workers each) with several seed URLs:
#   sse_redis redis://127.0.0.1:P1 redis://127.0.0.1:P2;
# The node sees cluster_enabled:1, learns the slots, follows MOVED and ASK, listens with sharded
# pub/sub (SSUBSCRIBE: a message travels only inside the shard that owns its channel), keeps each
# channel's history at key <prefix><channel> (the channel's own name, so the same slot) and loads
# its function library on every primary.
#   (a) fan-out both ways on 100 channels that cover all 3 shards: exact frames, the same ids on
#       both nodes;
#   (b) sharded: PUBSUB SHARDNUMSUB counts one subscriber per node in the shard that owns the
#       channel and none elsewhere; nothing classic (PUBSUB NUMSUB, NUMPAT);
#   (c) FUNCTION LIST on every primary shows the library sse;
#   (d) resume on the other node, one channel per shard (as t/42);
#   patterns (sse_subscribe_patterns on) in cluster mode: see the subtest;
#   (e) SIGKILL of a primary (one of the seeds) while both nodes publish at a steady rate to
#       channels of every shard: every publish is answered 202 (queued during the failover, not
#       refused), and once the replica has taken over every stream holds every event answered
#       202, once, with the ids of the publish replies, each node's events in its publish order;
#   (f) no worker exited, no [alert]/[crit]/[emerg], stats say connected and list every primary
#       (role "cluster node").
# Written before the implementation (branch cluster-tests): today nginx -t refuses several URLs.
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
use SSECluster;
use SSEExpect qw(frame frames first_difference);

my $locations = <<'CONF';
        location = /events {
            sse_subscribe $arg_topics;
            sse_max_channels 128;
            sse_heartbeat off;
        }
        location = /pevents {
            sse_subscribe $arg_topics;
            sse_subscribe_patterns on;
            sse_heartbeat off;
        }
        location = /pub {
            sse_publish $arg_topic;
            sse_history 1000;
        }
        location = /stats {
            sse_stats;
        }
        location = /clients {
            sse_clients;
        }
CONF

my $PERIOD = 0.06;         # (e): each node publishes every 60 ms; B 30 ms after A
my $BEFORE_KILL = 2.0;     # (e): publishing before the SIGKILL
my $AFTER_SWITCH = 3.0;    # (e): publishing after the cluster is whole again
my $FAILOVER_LIMIT = 20;   # (e): the replica must have taken over by then
my $PRE = ":ok\n\n";

# The whole test is bounded: a hang is a failure with the logs shown, not a stuck CI job.
$SIG{ALRM} = sub { die "t/64 did not finish within 180 s\n" };
alarm 180;

my $t_begin = time;
my $cl = SSECluster->new;
my @nodes;
my $stop_file;
END {
    local $?;
    # The publishers stop by themselves too, should the test die while they run.
    if ($stop_file) { open my $fh, '>', $stop_file }
    if (!Test::More->builder->is_passing) {
        for my $n (grep { defined } @nodes) {
            my @l = grep { /\[(?:warn|error|crit|alert|emerg)\]|sse: redis|Sanitizer|runtime error/ } split /\n/, $n->error_log;
            splice @l, 0, @l - 40 if @l > 40;
            diag('node :' . $n->port . "'s error.log (warn or worse, and every sse: redis line):\n" . join("\n", @l)) if @l;
        }
        $cl->diag_logs if $cl && grep { defined && $_->{started} } @nodes;
    }
    $_->stop for grep { defined } @nodes;
}

# --- the cluster as it starts (the harness) ----------------------------------------------------
my @primaries = $cl->primaries;
diag(sprintf 'cluster ready in %.1f s: %s', $cl->created_in, join(', ', map {
    my $p = $_;
    ':' . $p->port . ' [' . join(',', map { "$_->[0]-$_->[1]" } $cl->slots_of($p->port)) . '] replica :'
        . join(',', map { $_->port } $cl->replicas_of($p->port))
} @primaries));
is(scalar @primaries, 3, '3 primaries');
is_deeply([map { scalar $cl->replicas_of($_->port) } @primaries], [1, 1, 1], 'each with one replica');
{
    my $covered = 0;
    $covered += $_->[1] - $_->[0] + 1 for map { $cl->slots_of($_->port) } @primaries;
    is($covered, 16384, 'the primaries serve all 16384 slots');
}
ok(!grep({ ($_->info('cluster')->{cluster_enabled} // '') ne '1' } $cl->servers), 'INFO cluster: cluster_enabled:1 on all 6');
ok(!grep({ ($_->info_cluster->{cluster_state} // '') ne 'ok' } $cl->servers), 'CLUSTER INFO: cluster_state:ok on all 6');
for my $key ('sse:c0', 'sse:c99', 'sse:#control', 'sse:#node:1234', 'sse:blog.1', '{user1000}.following', 'foo{}{bar}',
             'foo{{bar}}zap', 'foo{bar}{zap}', '{}', 'a{b', "caf\xc3\xa9", '') {
    is(SSECluster::slot_of($key), $cl->keyslot($key), "slot_of('$key') is CLUSTER KEYSLOT's");
}

# The topology as it starts (until the SIGKILL in (e)): each shard's servers by its primary's port.
my $topo = $cl->topology;
my %members = map { my $p = $_->port; $p => [$p, map { $_->port } $cl->replicas_of($p)] } @primaries;

# The shard (its primary's port, as the cluster starts) that owns channel $ch's key and pub/sub channel.
sub shard_of { my ($ch) = @_; return $cl->node_for_key("sse:$ch", $topo)->port }

# The first $per names "$prefix<i>" in each shard, by shard (primary) order: ([shard1's], [shard2's], ...).
sub channels_per_shard {
    my ($prefix, $per) = @_;
    my %got;
    for (my $i = 0; grep({ @{ $got{ $_->port } // [] } < $per } @primaries); $i++) {
        my $owner = shard_of("$prefix$i");
        push @{ $got{$owner} }, "$prefix$i" if @{ $got{$owner} // [] } < $per;
    }
    return map { $got{ $_->port } } @primaries;
}

# PUBSUB SHARDNUMSUB on every running server of the cluster: {channel key => {port => count}}.
sub shard_counts {
    my (@keys) = @_;
    my %n;
    for my $r (grep { $_->running } $cl->servers) {
        my %c = split /\n/, $r->cli('PUBSUB', 'SHARDNUMSUB', @keys);
        $n{$_}{ $r->port } = $c{$_} // -1 for @keys;
    }
    return \%n;
}

# Subscribers of channel $ch in its own shard (primary and replicas) and in the other shards,
# from shard_counts' answer: (own, elsewhere).
sub own_and_elsewhere {
    my ($counts, $ch) = @_;
    my %own = map { $_ => 1 } @{ $members{ shard_of($ch) } };
    my ($own, $else) = (0, 0);
    for my $port (keys %{ $counts->{"sse:$ch"} }) {
        if ($own{$port}) { $own += $counts->{"sse:$ch"}{$port} } else { $else += $counts->{"sse:$ch"}{$port} }
    }
    return ($own, $else);
}

# CLIENT LIST entries on $redis named sse-* that carry the pid of one of $node's workers.
sub node_clients {
    my ($redis, $node) = @_;
    my @pids = $node->worker_pids;
    return grep { my $name = $_; grep { $name =~ /(?<!\d)$_(?!\d)/ } @pids } $redis->client_names('sse-');
}

# Waits (up to $timeout s, default 5) until stream $s holds as many bytes as $want, then checks them.
sub body_is {
    my ($s, $want, $label, $timeout) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    $s->wait_body(length $want, $timeout // 5);
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

# Publishes on $node to $ch an event "<tag> <i> <shape>": [id, its exact frame, the reply].
sub pub {
    my ($node, $ch, $tag, $i) = @_;
    my $sh = $shapes[$i % @shapes];
    return $node->publish_event("/pub?topic=$ch", "$tag $i $sh->[0]", $sh->[1]);
}

# --- two nodes ---------------------------------------------------------------------------------
my $seeds = $cl->seed_urls;
@nodes = $cl->nodes(2, url => $seeds, server => $locations, start => 0);
my ($A, $B) = @nodes;
my %name = ($A->port => 'A', $B->port => 'B');
{
    my ($rc, $out) = $A->test_conf;
    is($rc, 0, "nginx -t accepts sse_redis $seeds") or do { diag($out); done_testing; exit };
}
$_->start for @nodes;
{
    my $up = 0;
    for my $n (@nodes) {
        my $k = $name{ $n->port };
        $up += ok(SSERedis::wait_connected($n, 10), "$k is connected to the cluster");
        my @unsupported = SSERedis::log_lines($n, qr/is a Redis Cluster node, which this version does not support/);
        is(scalar @unsupported, 0, "$k does not say that Redis Cluster is not supported") or diag(join "\n", @unsupported);
    }
    # Without a link, everything below would only fail slowly.
    if ($up < @nodes) { $_->finish for @nodes; done_testing; exit }
}
my %workers = map { $_->port => join(' ', $_->worker_pids) } @nodes;

# Every primary, seed or not, has the connections of both nodes: they publish and listen there.
SSETest::wait_until(sub { !grep { my $p = $_; grep { !node_clients($p, $_) } @nodes } @primaries }, 5);
for my $p (@primaries) {
    for my $n (@nodes) {
        ok(scalar node_clients($p, $n), 'CLIENT LIST of primary :' . $p->port . ' holds connections of ' . $name{ $n->port })
            or diag(join ' ', $p->client_names('sse-'));
    }
}

# --- (c) the function library on every primary ---------------------------------------------------
for my $p (@primaries) {
    like($p->cli('FUNCTION', 'LIST', 'LIBRARYNAME', 'sse'), qr/^library_name\nsse$/m,
         'FUNCTION LIST on primary :' . $p->port . ' shows library sse');
}

# --- (a) and (b): 100 channels over the 3 shards ---------------------------------------------------
{
    my @C = map { "c$_" } 0 .. 99;
    my %owner = map { $_ => shard_of($_) } @C;
    my %per_shard;
    $per_shard{ $owner{$_} }++ for @C;
    is(scalar keys %per_shard, 3, 'the 100 channels lie in all 3 shards ('
       . join(', ', map { ':' . $_->port . ' ' . ($per_shard{ $_->port } // 0) } @primaries) . ')');
    # One channel per shard also gets a stream of its own on each node.
    my @single = map { $_->[0] } channels_per_shard('c', 1);
    my %s;
    for my $n (@nodes) {
        my $k = $name{ $n->port };
        $s{$k}{all} = $n->subscribe('/events?topics=' . join(',', @C));
        is($s{$k}{all}->status, 200, "$k: a stream on the 100 channels");
        $s{$k}{$_} = $n->subscribe("/events?topics=$_") for @single;
    }

    # (b) sharded pub/sub: each node listens in the shard that owns the channel, nowhere else.
    my @keys = map { "sse:$_" } @C;
    my $counts;
    my @wrong;
    SSETest::wait_until(sub {
        $counts = shard_counts(@keys);
        @wrong = grep { my ($own, $else) = own_and_elsewhere($counts, $_); $own != 2 || $else != 0 } @C;
        !@wrong;
    }, 5);
    is(scalar @wrong, 0, '(b) PUBSUB SHARDNUMSUB: each of the 100 channels has 2 subscribers in its own shard, 0 in the others')
        or diag(join "\n", map { my $c = $_; "$c (shard :$owner{$c}): " . join(' ', map { ":$_=$counts->{\"sse:$c\"}{$_}" } sort keys %{ $counts->{"sse:$c"} }) }
                           @wrong[0 .. ($#wrong < 9 ? $#wrong : 9)]);
    {
        my ($c) = @single;
        my %shard = map { $_ => 1 } @{ $members{ $owner{$c} } };
        my ($other) = grep { !$shard{ $_->port } } @primaries;
        is($other->cli('PUBSUB', 'SHARDNUMSUB', "sse:$c"), "sse:$c\n0", "(b) SHARDNUMSUB sse:$c on primary :" . $other->port . ' (another shard): 0');
        is($cl->server($owner{$c})->cli('PUBSUB', 'SHARDNUMSUB', "sse:$c"), "sse:$c\n2",
           "(b) SHARDNUMSUB sse:$c on its primary :$owner{$c}: 2");
    }
    for my $r ($cl->servers) {
        my %c = split /\n/, $r->cli('PUBSUB', 'NUMSUB', @keys);
        my @classic = grep { ($c{$_} // -1) != 0 } @keys;
        is(scalar @classic, 0, '(b) PUBSUB NUMSUB on :' . $r->port . ': no classic subscriber of any of the 100 channels')
            or diag(join ' ', map { "$_=" . ($c{$_} // '?') } @classic[0 .. ($#classic < 9 ? $#classic : 9)]);
        is($r->cli('PUBSUB', 'NUMPAT'), '0', '(b) PUBSUB NUMPAT on :' . $r->port . ': 0');
    }

    # (a) A publishes once to each channel, then (once both nodes have those) B does.
    my (%ev, %of);
    for my $pass ([A => $A], [B => $B]) {
        my ($tag, $n) = @$pass;
        for my $i (0 .. $#C) {
            my $e = pub($n, $C[$i], $tag, $i);
            $ev{$tag}{ $C[$i] } = $e;
            $of{ $e->[0] } = [$tag, $C[$i], $e];
        }
        my $want = ($tag eq 'A' ? 1 : 2) * @C;
        my $until = time + 10;
        $s{$_}{all}->events($want, $until - time) for 'A', 'B';
    }
    is(scalar keys %of, 2 * @C, '(a) 200 publishes, 200 ids');
    my %ids;
    for my $k ('A', 'B') {
        my $st = $s{$k}{all};
        $st->drain(0.3);
        my @got = $st->events;
        my %seen;
        my @dups = grep { $seen{ $_->{id} }++ } @got;
        is(scalar @got, 2 * @C, "(a) $k: the stream on the 100 channels has 200 events");
        is(scalar @dups, 0, "(a) $k: none twice") or diag(join ' ', map { $_->{id} } @dups);
        my @bad = grep { !$of{ $_->{id} } || $_->{frame} ne $of{ $_->{id} }[2][1] } @got;
        is(scalar @bad, 0, "(a) $k: each is one of the events published, with its id, exactly")
            or diag(explain [@bad[0 .. ($#bad < 4 ? $#bad : 4)]]);
        my @missing = grep { !$seen{$_} } sort keys %of;
        is(scalar @missing, 0, "(a) $k: every event published on either node is there")
            or diag(join ' ', map { "$_ ($of{$_}[0] $of{$_}[1])" } @missing[0 .. ($#missing < 9 ? $#missing : 9)]);
        # Per channel, A's event then B's (B published once A's had reached both nodes).
        my %per;
        push @{ $per{ $of{ $_->{id} }[1] } }, $_->{id} for grep { $of{ $_->{id} } } @got;
        my @order = grep { join(' ', @{ $per{$_} // [] }) ne "$ev{A}{$_}[0] $ev{B}{$_}[0]" } @C;
        is(scalar @order, 0, "(a) $k: on each channel A's event, then B's") or diag(join ' ', @order[0 .. ($#order < 9 ? $#order : 9)]);
        # The node's own events reach its streams in its publish order.
        my $own = first_difference([map { $_->{id} } grep { $of{ $_->{id} } && $of{ $_->{id} }[0] eq $k } @got],
                                   [map { $ev{$k}{$_}[0] } @C]);
        ok(!defined $own, "(a) $k: its own events in its publish order") or diag($own);
        $ids{$k} = join ' ', sort map { $_->{id} } @got;
    }
    is($ids{B}, $ids{A}, '(a) the same ids on both nodes');
    for my $c (@single) {
        for my $k ('A', 'B') {
            body_is($s{$k}{$c}, $PRE . frames($ev{A}{$c}, $ev{B}{$c}), "(a) $k: the stream on $c alone (shard :$owner{$c}): A's event, then B's, exactly", 2);
        }
    }
    $_->close for map { values %$_ } values %s;
}

# --- (d) resume on the other node, a channel in each shard ---------------------------------------
for my $c (map { $_->[0] } channels_per_shard('r', 1)) {
    my $owner = $cl->server(shard_of($c));
    my $s = $A->subscribe("/events?topics=$c");
    my @first = map { pub($A, $c, 'first', $_) } 1 .. 10;
    body_is($s, $PRE . frames(@first), "(d) $c (shard :" . $owner->port . '): a stream on A reads the first 10');
    $s->close;
    my @missed = map { pub($A, $c, 'missed', $_) } 1 .. 20;
    my $x = $B->resume("/events?topics=$c", $first[-1][0]);
    is($x->status, 200, "(d) $c: the resume on B answers 200");
    my $want = $PRE . frames(@missed);
    body_is($x, $want, "(d) $c: resume on B (no stream there before): exactly the 20 missed events");
    my $la = pub($A, $c, 'live from A', 1);
    $x->wait_body(length($want) + length($la->[1]), 10);
    my $lb = pub($B, $c, 'live from B', 2);
    body_is($x, $want . $la->[1] . $lb->[1], "(d) $c: then the live events of A and of B");
    $x->close;
    is(SSERedis::wait_value(sub { $owner->llen("sse:$c") }, 32, 2), 32,
       "(d) $c: its history (list sse:$c) is on the primary that owns its slot, 32 events");
}

# --- patterns in cluster mode ----------------------------------------------------------------------
# A pattern (blog.*) cannot be sharded: the channels it covers lie in every shard, and sharded
# pub/sub has no PSUBSCRIBE. Decision (docs/redis.md, "Cluster"): a node following a cluster
# refuses pattern streams with 400 and a reason naming Redis Cluster; streams on plain channels
# go on working, and Redis sees no classic subscription.
subtest 'patterns (sse_subscribe_patterns on) in cluster mode: refused with 400' => sub {
    for my $n (@nodes) {
        my $k = $name{ $n->port };
        my $r = $n->request('GET', '/pevents?topics=blog.*');
        is($r->{status}, 400, "$k: a stream on blog.* is answered 400");
        is($r->{body}, "channel patterns cannot be used with Redis Cluster\n", "$k: the reason names Redis Cluster");
        my $plain = $n->subscribe('/pevents?topics=blog.plain');
        is($plain->status, 200, "$k: a stream on the plain channel blog.plain in the same location opens");
        my $other = $n == $A ? $B : $A;
        my $e = $other->publish_event('/pub?topic=blog.plain', "plain from the other node");
        ok(SSETest::wait_until(sub { $plain->drain(0.05); scalar $plain->events }, 5),
           "$k: it gets the other node's event");
        my @got = $plain->events;
        is(scalar @got, 1, "$k: exactly one event");
        is($got[0]{frame}, $e->[1], "$k: exactly as published (id and bytes)") if @got;
        $plain->close;
    }
    for my $p (@primaries) {
        is($p->cli('PUBSUB', 'NUMPAT'), '0', 'PUBSUB NUMPAT on :' . $p->port . ': 0 (no classic pattern)');
    }
};

# --- (e) SIGKILL of a primary while both nodes publish to every shard --------------------------------
# The first seed's primary dies: after the failover, one of the two URLs names a dead server.
my $victim = $primaries[0];
my $K = $victim->port;
my $heir = $cl->replica_of($K);
my $H = $heir->port;
my @F = map { @$_ } channels_per_shard('f', 2);
my %f_owner = map { $_ => shard_of($_) } @F;
my @F_victim = grep { $f_owner{$_} == $K } @F;
diag("(e) channels " . join(', ', map { "$_ :$f_owner{$_}" } @F) . "; primary :$K dies, its replica :$H takes over");
my %streams;
for my $n (@nodes) {
    my $k = $name{ $n->port };
    $streams{$k} = {all => $n->subscribe('/events?topics=' . join(',', @F)), victim => $n->subscribe("/events?topics=$F_victim[0]")};
}
{
    my @keys = map { "sse:$_" } @F;
    my $counts;
    my $ok = SSETest::wait_until(sub {
        $counts = shard_counts(@keys);
        !grep { my ($own, $else) = own_and_elsewhere($counts, $_); $own != 2 || $else != 0 } @F;
    }, 5);
    ok($ok, '(e) both nodes listen to the 6 channels, each in its own shard');
}

$stop_file = $A->dir . '/stop-publishing';

# A publisher POSTing "<tag> <n>" to $node every $PERIOD, to the channels @F in turn, until
# $stop_file exists (SSERedis::start_paced_publisher); returns its pid and its log.
sub start_publisher {
    my ($node, $tag, $delay) = @_;
    return SSERedis::start_paced_publisher($node, $tag, log => $A->dir . "/publisher-$tag.log", delay => $delay,
                                           period => $PERIOD, stop_file => $stop_file, channel => sub { $F[$_[0] % @F] });
}

my %pre_kill_info = map { $_->port => $_->info('commandstats', 'errorstats', 'replication') } $cl->replicas;
my $t0 = time;
my %pub = (A => [start_publisher($A, 'A', 0)], B => [start_publisher($B, 'B', $PERIOD / 2)]);
my ($killed_at, $failover, $whole_at, %down_at, %up_at);
while (1) {
    if (!$killed_at) {
        if (time - $t0 >= $BEFORE_KILL) {
            $cl->crash($K);
            $killed_at = time;
            diag(sprintf '(e) primary :%d SIGKILLed at %.2f s', $K, $killed_at - $t0);
        }
        sleep 0.02;
        next;
    }
    # The nodes' view, for the diagnostics: when their stats first said anything but connected,
    # and when connected again.
    for my $n (@nodes) {
        my $st = eval { $n->stats->{redis}{state} } // '(no stats)';
        my $k = $name{ $n->port };
        $down_at{$k} //= time if $st ne 'connected';
        $up_at{$k} //= time if $down_at{$k} && $st eq 'connected';
    }
    if (!$whole_at) {
        # Waits at most 0.5 s: the loop goes on polling the nodes.
        $failover = $cl->wait_failover($K, 0.5);
        $whole_at = time if $failover;
    }
    last if $whole_at && time - $whole_at >= $AFTER_SWITCH;
    last if time - $killed_at > $FAILOVER_LIMIT;
    sleep 0.02;
}
SSERedis::stop_paced_publishers($stop_file, values %pub);
my $stopped_at = time;

ok($failover, "(e) the replica :$H took over within $FAILOVER_LIMIT s of the SIGKILL") or do { done_testing; exit };
is($failover->{primary}->port, $H, "(e) the new primary is :$H");
diag(sprintf '(e) failover: :%d was master %.2f s after the SIGKILL, the cluster was ok %.2f s after; stats said connected again: %s',
     $H, $failover->{promoted}, $failover->{ok},
     join(', ', map { "$_ " . ($up_at{$_} ? sprintf('%.2f s', $up_at{$_} - $killed_at) : $down_at{$_} ? 'not yet' : 'never said otherwise') } 'A', 'B'));
ok(SSERedis::wait_connected($_, 10), '(e) ' . $name{ $_->port } . ' is connected again') for @nodes;

# What was published.
my (@pubs, %by_id);
for my $tag ('A', 'B') {
    for my $p (SSERedis::read_paced_publisher_log($pub{$tag}[1])) {
        $p->{data} = "$p->{tag} $p->{n}";
        push @pubs, $p;
    }
}
my @ok = grep { $_->{status} == 202 } @pubs;
my @refused = grep { $_->{status} != 202 } @pubs;
is(scalar @refused, 0, '(e) every publish was answered 202 (' . scalar(@pubs) . ' publishes)')
    or diag(join "\n", map { sprintf '%s %d %s: %d at %.2f s', @$_{qw(tag n ch status)}, $_->{sent} - $t0 } @refused[0 .. ($#refused < 9 ? $#refused : 9)]);
$by_id{ $_->{id} } = $_ for @ok;
is(scalar keys %by_id, scalar @ok, '(e) each 202 has its own id');
my $when = sub { sprintf '%+.2f s from the kill', $_[0] - $killed_at };
my $promoted_at = $killed_at + $failover->{promoted};
for my $tag ('A', 'B') {
    my @mine = grep { $_->{tag} eq $tag } @ok;
    cmp_ok(scalar(grep { $_->{answered} < $killed_at } @mine), '>=', 10, "(e) $tag published before the kill");
    cmp_ok(scalar(grep { $_->{sent} > $whole_at + 1 } @mine), '>=', 10, "(e) $tag published after the failover");
    my @bad = grep { $_->{redis} !~ /^(?:forwarded|queued)$/ } @mine;
    is(scalar @bad, 0, "(e) $tag: every reply says \"redis\":\"forwarded\" or \"queued\"")
        or diag(join ' ', map { "$_->{n}:$_->{redis}" } @bad);
    # The dead primary's channels between the kill and the promotion: nowhere to send them.
    my @dark = grep { $f_owner{ $_->{ch} } == $K && $_->{sent} > $killed_at + 0.1 && $_->{answered} < $promoted_at } @mine;
    my @queued = grep { $_->{redis} eq 'queued' } @dark;
    cmp_ok(scalar @queued, '>=', 1, "(e) $tag: publishes to the dead primary's channels before the promotion were answered \"queued\" ("
           . scalar(@queued) . ' of ' . scalar(@dark) . ')')
        or diag(join ' ', map { "$_->{n}:$_->{ch}:$_->{redis}\@" . $when->($_->{sent}) } @dark);
}

# Each node's streams: every event answered 202, once, the same id, each node's publish order.
my $until = time + 10;
for my $k ('A', 'B') {
    for my $which ('all', 'victim') {
        my $stream = $streams{$k}{$which};
        my @want = $which eq 'all' ? @ok : grep { $_->{ch} eq $F_victim[0] } @ok;
        my $label = $which eq 'all' ? "$k, the stream on the 6 channels" : "$k, the stream on $F_victim[0] (shard :$K)";
        $stream->events(scalar @want, $until - time);
        $stream->drain(0.5);
        my @got = $stream->events;
        my %seen;
        my @dups = grep { $seen{ $_->{id} }++ } @got;
        is(scalar @dups, 0, "(e) $label: no event twice") or diag(join ' ', map { "$_->{id}:$_->{data}" } @dups);
        my @unknown = grep { !$by_id{ $_->{id} } } @got;
        is(scalar @unknown, 0, "(e) $label: no event that was not answered 202") or diag(join ' ', map { "$_->{id}:$_->{data}" } @unknown);
        my @missing = grep { !$seen{ $_->{id} } } @want;
        is(scalar @missing, 0, "(e) $label: every one of the " . scalar(@want) . ' events answered 202 is there')
            or diag(join "\n", map { sprintf '%s %d %s id %s (%s, answered %s)', @$_{qw(tag n ch id)}, $when->($_->{sent}), $_->{redis} }
                               @missing[0 .. ($#missing < 19 ? $#missing : 19)]);
        my @wrong = grep { $by_id{ $_->{id} } && $_->{frame} ne frame($_->{id}, $by_id{ $_->{id} }{data}) } @got;
        is(scalar @wrong, 0, "(e) $label: each event has the data and the id its publish reply gave, exactly")
            or diag(explain [@wrong[0 .. ($#wrong < 4 ? $#wrong : 4)]]);
        # A node's events on one channel keep its publish order everywhere; on its own node all
        # its events do. Across shards the other node's events may interleave differently (each
        # shard brings its own), so that is not asked.
        for my $tag ('A', 'B') {
            my @chs = $tag eq $k ? (undef) : grep { $which eq 'all' || $_ eq $F_victim[0] } @F;
            for my $ch (@chs) {
                my $mine = sub { my $p = $_[0]; $p && $p->{tag} eq $tag && (!defined $ch || $p->{ch} eq $ch) };
                my $diff = first_difference([map { $_->{id} } grep { $mine->($by_id{ $_->{id} }) } @got],
                                            [map { $_->{id} } grep { $mine->($_) } @want],
                                            sub { my $p = $by_id{ $_[0] }; "$_[0] ($p->{data} $p->{ch}, " . $when->($p->{sent}) . ", $p->{redis})" });
                ok(!defined $diff, "(e) $label: ${tag}'s events " . (defined $ch ? "on $ch " : '') . "in ${tag}'s publish order")
                    or diag($diff);
            }
        }
        ok(!$stream->eof, "(e) $label: still open");
    }
}
{
    my %ids = map { my $k = $_; $k => join(' ', sort map { $_->{id} } $streams{$k}{all}->events) } 'A', 'B';
    is($ids{B}, $ids{A}, '(e) the same ids on both nodes');
}

# The new primary: both nodes' connections, their subscriptions moved there, the library.
SSETest::wait_until(sub { !grep { !node_clients($heir, $_) } @nodes }, 5);
for my $n (@nodes) {
    ok(scalar node_clients($heir, $n), "(e) CLIENT LIST of the new primary :$H holds connections of " . $name{ $n->port })
        or diag(join ' ', $heir->client_names('sse-'));
}
{
    my %c = split /\n/, $heir->cli('PUBSUB', 'SHARDNUMSUB', map { "sse:$_" } @F_victim);
    is_deeply([map { $c{"sse:$_"} } @F_victim], [map { 2 } @F_victim], "(e) SHARDNUMSUB on the new primary :$H: both nodes listen to "
              . join(', ', @F_victim) . ' there');
}
like($heir->cli('FUNCTION', 'LIST', 'LIBRARYNAME', 'sse'), qr/^library_name\nsse$/m, "(e) FUNCTION LIST on the new primary :$H shows sse");

# Redis's history of each channel: the surviving shards have every event answered 202; the
# promoted replica has what it had been sent and what the nodes sent it after, never twice, each
# node's in its publish order. What the old primary acknowledged and had not passed on when it
# died is counted (asynchronous replication, docs/redis.md), not failed.
for my $ch (@F) {
    my $r = $cl->node_for_key("sse:$ch");
    my @entries = map { my $e = eval { decode_json($_) }; $e ? $e : { i => "(not JSON: $_)" } }
                  grep { length } split /\n/, $r->cli('LRANGE', "sse:$ch", 0, -1);
    my %count;
    $count{ $_->{i} }++ for @entries;
    my @twice = grep { $count{$_} > 1 } sort keys %count;
    is(scalar @twice, 0, "(e) history sse:$ch on :" . $r->port . ': no event twice') or diag(join ' ', @twice);
    my @unknown = grep { !$by_id{ $_->{i} } || $by_id{ $_->{i} }{ch} ne $ch } @entries;
    is(scalar @unknown, 0, "(e) history sse:$ch: only events answered 202 for it") or diag(explain \@unknown);
    my @want = grep { $_->{ch} eq $ch } @ok;
    my @absent = grep { !$count{ $_->{id} } } @want;
    if ($f_owner{$ch} == $K) {
        my @after = grep { $_->{sent} > $killed_at } @absent;
        is(scalar @after, 0, "(e) history sse:$ch on the new primary: every event published after the kill")
            or diag(join ' ', map { $_->{data} } @after);
        diag(sprintf '(e) events of sse:%s answered 202 that the new primary lacks: %d (%s)', $ch, scalar @absent,
             join(' ', map { $_->{data} . '@' . $when->($_->{sent}) } @absent) || 'none');
    } else {
        is(scalar @absent, 0, "(e) history sse:$ch (a shard that lived): every event answered 202") or diag(join ' ', map { $_->{data} } @absent);
    }
    for my $tag ('A', 'B') {
        my $diff = first_difference([map { $_->{i} } grep { $by_id{ $_->{i} } && $by_id{ $_->{i} }{tag} eq $tag } @entries],
                                    [map { $_->{id} } grep { $_->{tag} eq $tag && $count{ $_->{id} } } @want]);
        ok(!defined $diff, "(e) history sse:$ch: ${tag}'s events in ${tag}'s publish order") or diag($diff);
    }
}

# No node wrote to a replica: Redis counts every FCALL it runs (a replica runs the writes it is
# sent as their effects, not as FCALL).
for my $port (sort keys %pre_kill_info) {
    ok(!defined $pre_kill_info{$port}{cmdstat_fcall}, "(e) replica :$port ran no FCALL before the kill ("
       . ($pre_kill_info{$port}{cmdstat_fcall} // 'none') . ')');
}
for my $r ($cl->replicas) {
    my $info = $r->info('commandstats');
    ok(!defined $info->{cmdstat_fcall}, '(e) replica :' . $r->port . ' ran no FCALL (' . ($info->{cmdstat_fcall} // 'none') . ')');
}

# --- (f) what the nodes logged and counted ----------------------------------------------------------
my @now = $cl->primaries;
is(join(' ', sort map { $_->port } @now), join(' ', sort map { $_->port } grep { $_->port != $K } @primaries, $heir),
   '(f) the primaries now: the two that lived and the promoted replica');
for my $n (@nodes) {
    my $k = $name{ $n->port };
    my @about = grep { /sse: redis/ && /127\.0\.0\.1:$K\b/ } split /\n/, $n->error_log;
    ok(grep({ /\[warn\]/ } @about), "(f) $k: a warn line names the primary that died (127.0.0.1:$K)")
        or diag(join "\n", grep { /sse: redis/ } split /\n/, $n->error_log);
    cmp_ok(scalar @about, '<', 10, "(f) $k: a few lines about it, not one per event or attempt") or diag(join "\n", @about);
    my $st = $n->stats;
    my $r = $st->{redis};
    is($r->{state}, 'connected', "(f) $k: stats redis.state is connected");
    cmp_ok($r->{reconnects}, '>=', 1, "(f) $k: stats redis.reconnects is at least 1 (" . ($r->{reconnects} // 'none') . ')');
    my @servers = @{ $r->{servers} // [] };
    my @shapeless = grep { join(',', sort keys %$_) ne 'address,reconnects,role,state' } @servers;
    ok(@servers && !@shapeless, "(f) $k: stats redis.servers: entries {address, role, state, reconnects}")
        or diag(explain \@servers);
    for my $p (@now) {
        my ($e) = grep { ($_->{address} // '') eq '127.0.0.1:' . $p->port } @servers;
        ok($e && $e->{role} eq 'cluster node' && $e->{state} eq 'connected',
           "(f) $k: redis.servers names primary 127.0.0.1:" . $p->port . ', role "cluster node", connected')
            or diag(explain \@servers);
    }
    my ($dead) = grep { ($_->{address} // '') eq "127.0.0.1:$K" } @servers;
    ok(!$dead || $dead->{state} ne 'connected', "(f) $k: the dead primary 127.0.0.1:$K is not said to be connected")
        or diag(explain $dead);
    my @prom = grep { /^sse_redis_server_/ } split /\n/, $n->request('GET', '/stats?format=prometheus')->{body};
    for my $p (@now) {
        my $addr = '127.0.0.1:' . $p->port;
        ok(grep({ /^sse_redis_server_up\{(?=[^}]*address="\Q$addr\E")(?=[^}]*role="cluster node")[^}]*\} 1$/ } @prom),
           "(f) $k: Prometheus sse_redis_server_up{address=\"$addr\",role=\"cluster node\"} 1") or diag(join "\n", @prom);
    }
    is(join(' ', $n->worker_pids), $workers{ $n->port }, "(f) $k: the same workers as at the start (none exited)");
}

# --- (g) an event on channels of two shards -----------------------------------------------------------
# One FCALL per slot (a call's keys must share one), each naming both keys: a node listening to
# both channels takes the event once.
{
    my ($m0, $m1);
    for my $i (0 .. 200) {
        $m0 //= "m$i" if $cl->node_for_key("sse:m$i")->port == $now[0]->port;
        $m1 //= "m$i" if $cl->node_for_key("sse:m$i")->port == $now[1]->port;
        last if $m0 && $m1;
    }
    my %g = (a0 => $A->subscribe("/events?topics=$m0"), b1 => $B->subscribe("/events?topics=$m1"),
             both => $B->subscribe("/events?topics=$m0,$m1"));
    ok(SSETest::wait_until(sub {
        $now[0]->cli('PUBSUB', 'SHARDNUMSUB', "sse:$m0") eq "sse:$m0\n2" && $now[1]->cli('PUBSUB', 'SHARDNUMSUB', "sse:$m1") eq "sse:$m1\n1"
    }, 5), "(g) $m0 (:" . $now[0]->port . ") and $m1 (:" . $now[1]->port . '): the nodes listen in both shards');
    my $e = $A->publish_event("/pub?topic=$m0,$m1", 'two shards');
    my $want = ":ok\n\n" . $e->[1];
    for my $k (sort keys %g) {
        $g{$k}->wait_body(length $want, 5);
        $g{$k}->drain(0.3);
        is($g{$k}->body, $want, "(g) stream $k: the event once, exactly");
    }
    for my $pair ([$now[0], $m0], [$now[1], $m1]) {
        my ($r, $ch) = @$pair;
        my @entries = map { decode_json($_) } grep { length } split /\n/, $r->cli('LRANGE', "sse:$ch", '0', '-1');
        my @it = grep { $_->{i} eq $e->[0] } @entries;
        is(scalar @it, 1, "(g) history sse:$ch on :" . $r->port . ': the event once');
        is_deeply($it[0] && $it[0]{c}, ["sse:$m0", "sse:$m1"], "(g) history sse:$ch: its entry names both channels");
    }
    $_->close for values %g;
}

# --- (h) a slot moving: ASK while it moves, then MOVED and the shard's sunsubscribe ---------------------
# B listens to a channel whose slot moves from S to T; A publishes to it during the move (S has
# no key of it: ASK, which the node follows with ASKING to T) and after it (A's map is old:
# MOVED, the map read again). B's shard unsubscribes it when the slot leaves S: B reads the map
# again and listens at T. B's stream has both events once, in order; T's history has both.
{
    my ($S, $T) = @now[0, 1];
    my $ch;
    for my $i (0 .. 500) {
        next unless $cl->node_for_key("sse:ask$i")->port == $S->port;
        next unless $S->cli('CLUSTER', 'COUNTKEYSINSLOT', $cl->keyslot("sse:ask$i")) eq '0';
        $ch = "ask$i";
        last;
    }
    my $slot = $cl->keyslot("sse:$ch");
    my $b = $B->subscribe("/events?topics=$ch");
    ok(SSETest::wait_until(sub { $S->cli('PUBSUB', 'SHARDNUMSUB', "sse:$ch") eq "sse:$ch\n1" }, 5),
       "(h) B listens to $ch (slot $slot) at :" . $S->port);
    my ($sid, $tid) = map { $_->cli('CLUSTER', 'MYID') } $S, $T;
    is($T->cli('CLUSTER', 'SETSLOT', $slot, 'IMPORTING', $sid), 'OK', "(h) slot $slot importing at :" . $T->port);
    is($S->cli('CLUSTER', 'SETSLOT', $slot, 'MIGRATING', $tid), 'OK', "(h) slot $slot migrating at :" . $S->port);
    my $e1 = $A->publish_event("/pub?topic=$ch", 'during the move');
    # (COUNTKEYSINSLOT answers for a slot a node does not own yet, where LLEN would be redirected.)
    is(SSERedis::wait_value(sub { $T->cli('CLUSTER', 'COUNTKEYSINSLOT', $slot) }, '1', 5), '1',
       '(h) the event went to the importing primary (ASK followed)');
    is($S->cli('CLUSTER', 'COUNTKEYSINSLOT', $slot), '0', '(h) and not to the one the slot leaves');
    is($_->cli('CLUSTER', 'SETSLOT', $slot, 'NODE', $tid), 'OK', "(h) slot $slot given to :" . $T->port . ' on :' . $_->port) for $T, $S, $now[2];
    my $e2 = $A->publish_event("/pub?topic=$ch", 'after the move');
    my $want = ":ok\n\n" . $e1->[1] . $e2->[1];
    $b->wait_body(length $want, 10);
    $b->drain(0.3);
    is($b->body, $want, "(h) B's stream: both events once, in order, exactly");
    my @ids = map { decode_json($_)->{i} } grep { length } split /\n/, $T->cli('LRANGE', "sse:$ch", '0', '-1');
    is_deeply(\@ids, [$e1->[0], $e2->[0]], "(h) the history at :" . $T->port . ': both events, in order');
    is($T->cli('PUBSUB', 'SHARDNUMSUB', "sse:$ch"), "sse:$ch\n1", '(h) B listens at :' . $T->port . ' now');
    $b->close;
    for my $n (@nodes) {
        is(join(' ', $n->worker_pids), $workers{ $n->port }, "(h) $name{ $n->port }: the same workers (none exited)");
    }
}

# --- (i) every node's streams, through the cluster ------------------------------------------------
# The nodes hear requests for every node on the primary that owns <prefix>#control's slot (classic
# pub/sub is per node in a cluster): sse_clients?scope=cluster asks there, whatever the seeds.
{
    my %held = (A => [map { $A->subscribe("/events?topics=list$_") } 1 .. 2], B => [$B->subscribe('/events?topics=list3')]);
    for my $n (@nodes) {
        my $k = $name{ $n->port };
        my $body;
        ok(SSETest::wait_until(sub {
            my $r = $n->request('GET', '/clients?scope=cluster&channel=' . ($k eq 'A' ? 'list3' : 'list1'));
            $body = eval { decode_json($r->{body}) };
            $body && @{ $body->{nodes} // [] } == 2 && !@{ $body->{unanswered} // [] };
        }, 5), "(i) $k: scope=cluster lists both nodes, none missing") or diag(explain $body);
        is_deeply([map { $_->{total} } @{ $body->{nodes} }], [0, 1],
                  "(i) $k: its own entry first (0 on that channel), the other node's stream on it (1)");
    }
    $_->close for map { @$_ } values %held;
}

$_->close for map { values %$_ } values %streams;
$_->finish for @nodes;
diag(sprintf 'the test took %.1f s (cluster %.1f s, publishing %.1f s)', time - $t_begin, $cl->created_in, $stopped_at - $t0);
done_testing;

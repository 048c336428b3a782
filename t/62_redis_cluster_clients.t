# sse_clients?scope=cluster lists every node's streams through Redis: 3 nodes, each with its own
# streams; the answer has one entry per node (this node's marked "self"), each with exactly that
# node's clients, filters applied on every node. A node that cannot answer (all its processes
# stopped with SIGSTOP, so its Redis connections stay open and it still counts as listening) is
# named in "unanswered" once the bounded wait (1 s) is over, and the others are still listed.
# scope=node (the default) stays this node's; a bad scope is refused; without Redis, 400.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use JSON::PP;
use SSETest;
use SSERedis;

my $locations = SSERedis::locations(events => 'sse_user $arg_user;', pub => undef, more => <<'CONF');
        location = /clients {
            sse_clients;
        }
CONF

my $redis = SSERedis->new;
my @nodes = $redis->nodes(3, server => $locations);
my ($A, $B, $C) = @nodes;
my @stopped;
END {
    local $?;
    kill 'CONT', @stopped if @stopped;
    $_->stop for grep { defined } @nodes;
    $redis->stop if $redis;
}
ok(SSERedis::wait_connected($_), 'node :' . $_->port . ' connected') for @nodes;

# Streams: A has 2 (alice on a, bob on a,b), B has 1 (alice on b), C has 3 (carol on c).
my @streams = ($A->subscribe('/events?topics=a&user=alice'), $A->subscribe('/events?topics=a,b&user=bob'),
               $B->subscribe('/events?topics=b&user=alice'), map { $C->subscribe('/events?topics=c&user=carol') } 1 .. 3);
$_->wait_body(length ":ok\n\n", 5) for @streams;
for ([$A, 2], [$B, 1], [$C, 3]) {
    my ($n, $want) = @$_;
    is($n->stats_until({subscribers => $want}, 5)->{subscribers}, $want, 'node :' . $n->port . " has $want streams");
}
my @channels = split /\n/, $redis->cli('PUBSUB', 'CHANNELS', 'sse:#node:*');
is(scalar @channels, 3, 'Redis: 3 nodes listen on their own channels');

sub cluster {
    my ($node, $query) = @_;
    my $t0 = time;
    my $res = $node->request('GET', '/clients?scope=cluster' . ($query // ''));
    my $took = time - $t0;
    my $body = eval { decode_json($res->{body}) };
    return ($res, $body, $took);
}

# The users seen per node entry: "self" first, then the others sorted by their number of streams.
sub users_by_node {
    my ($body) = @_;
    return [map { join ',', sort map { $_->{user} // '-' } @{ $_->{clients} } } @{ $body->{nodes} }];
}

my ($res, $body, $took) = cluster($A);
is($res->{status}, 200, 'scope=cluster on A: 200');
is($body->{scope}, 'cluster', 'the answer says its scope');
is(scalar @{ $body->{nodes} }, 3, 'three nodes');
ok($body->{nodes}[0]{self}, "the first is A itself");
is($body->{nodes}[0]{total}, 2, "A's entry: its 2 streams");
is_deeply([sort map { $_->{total} } @{ $body->{nodes} }], [1, 2, 3], 'each node with its own streams (1, 2, 3)');
is_deeply([sort @{ users_by_node($body) }], [sort 'alice,bob', 'alice', 'carol,carol,carol'],
          'exactly the users of each node');
my %seen_nodes = map { $_->{node} => 1 } @{ $body->{nodes} };
is(scalar keys %seen_nodes, 3, 'three distinct node ids');
ok(!grep({ !/^[0-9a-f]{16}$/ } keys %seen_nodes), 'node ids are 16 hex digits');
is_deeply([sort map { "sse:#node:$_" } keys %seen_nodes], [sort @channels], "they are the nodes listening in Redis");
is_deeply($body->{unanswered}, [], 'no node left unanswered');
cmp_ok($took, '<', 0.9, sprintf('every node answered before the wait ran out (%.2f s)', $took));

# Filters apply on every node.
($res, $body) = cluster($B, '&user=alice');
is($res->{status}, 200, 'scope=cluster&user=alice on B: 200');
is_deeply([sort map { $_->{total} } @{ $body->{nodes} }], [0, 1, 1], 'alice: one stream on A, one on B, none on C');
ok($body->{nodes}[0]{self} && $body->{nodes}[0]{total} == 1, "B's own entry first: alice's stream there");
($res, $body) = cluster($A, '&channel=c&limit=2');
my ($c_entry) = grep { $_->{total} == 3 } @{ $body->{nodes} };
ok($c_entry, "channel=c: C's entry has its 3 streams");
is(scalar @{ $c_entry->{clients} // [] }, 2, 'limit=2: two of them on this page');
ok(defined $c_entry->{next}, 'and a next cursor');

# Scope node and bad scopes.
my $local = $A->request('GET', '/clients?scope=node');
is(decode_json($local->{body})->{total}, 2, 'scope=node: A alone (2 streams)');
my $bad = $A->request('GET', '/clients?scope=galaxy');
is($bad->{status}, 400, 'scope=galaxy: 400');
like($bad->{body}, qr/^scope is node \(the default\) or cluster\n\z/, 'with the reason');

# C stops answering: every process of it stopped, its connections to Redis still open.
my $c_master = $C->master_pid;
@stopped = ($c_master, $C->worker_pids);
kill 'STOP', @stopped;
($res, $body, $took) = cluster($A);
is($res->{status}, 200, 'C stopped: still 200');
is(scalar @{ $body->{nodes} }, 2, 'A and B listed');
is(scalar @{ $body->{unanswered} }, 1, 'one node unanswered');
my ($c_id) = @{ $body->{unanswered} };
ok($seen_nodes{ $c_id } && !grep({ $_->{node} eq $c_id } @{ $body->{nodes} }), 'it is C (named by its node id)');
cmp_ok($took, '>=', 0.9, sprintf('after the bounded wait (%.2f s)', $took));
cmp_ok($took, '<', 3, 'and not much longer');
kill 'CONT', @stopped;
@stopped = ();
ok(SSETest::wait_until(sub { my (undef, $b) = cluster($A); $b && @{ $b->{nodes} } == 3 }, 10),
   'C answers again once it runs');

# Without Redis: 400.
my $single = SSETest->new(server => $locations)->start;
my $r1 = $single->request('GET', '/clients?scope=cluster');
is($r1->{status}, 400, 'a single node (no sse_redis): scope=cluster is 400');
like($r1->{body}, qr/needs sse_redis/, 'with the reason');
$single->finish;

$_->close for @streams;
$_->finish for @nodes;
@nodes = ();
done_testing;

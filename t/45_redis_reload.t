# nginx -s reload on a node with Redis: the retiring worker closes its two connections and one new
# worker opens two, so CLIENT LIST returns to 2 sse- clients per node (named after a current
# worker) after every reload, and fan-out works after each one. The same when the worker holding
# the connections is killed: another worker takes over.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use SSETest;
use SSERedis;
use SSEExpect qw(frame frames);

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

my $redis = SSERedis->new;
my @nodes = $redis->nodes(2, server => $locations);
my ($A, $B) = @nodes;
END { local $?; SSERedis::diag_unfinished(@nodes); $_->stop for grep { defined } @nodes; $redis->stop if $redis }

my $PRE = ":ok\n\n";

sub body_is {
    my ($s, $want, $label) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    $s->wait_body(length $want, 10);
    $s->drain(0.3) if length($s->body) == length $want;
    return is($s->body, $want, $label);
}

# The workers of $node named in CLIENT LIST: pid => [its sse- names].
sub owners {
    my ($node) = @_;
    my %w = map { $_ => [] } $node->worker_pids(1);
    for my $name ($redis->client_names) {
        my ($pid) = $name =~ /^sse-(?:sub|cmd)-(\d+)$/ or next;
        push @{ $w{$pid} }, $name if $w{$pid};
    }
    delete $w{$_} for grep { !@{ $w{$_} } } keys %w;
    return \%w;
}

# Steady state: 4 sse- clients, and on each node one current worker holding sse-sub-<pid> and
# sse-cmd-<pid>.
sub steady {
    my ($label) = @_;
    my $ok = SSETest::wait_until(sub {
        return 0 unless $redis->client_count == 4;
        for my $n (@nodes) {
            my $o = owners($n);
            my %current = map { $_ => 1 } $n->worker_pids;
            my @p = keys %$o;
            return 0 unless @p == 1 && $current{ $p[0] } && @{ $o->{ $p[0] } } == 2;
        }
        return 1;
    }, 10);
    ok($ok, "$label: CLIENT LIST holds 4 sse- clients, sse-sub-<pid> and sse-cmd-<pid> of one current worker per node")
        or diag(join ' ', $redis->client_names);
    return $ok;
}

# Fan-out both ways on a fresh channel.
my $round = 0;
sub fanout_works {
    my ($label) = @_;
    my $ch = 'rl' . ++$round;
    my $sa = $A->subscribe("/events?topics=$ch");
    my $sb = $B->subscribe("/events?topics=$ch");
    ok($redis->wait_numsub("sse:$ch", 2), "$label: PUBSUB NUMSUB sse:$ch is 2");
    my $e1 = $A->publish_event("/pub?topic=$ch", "A after $label");
    $sb->wait_body(length($PRE . $e1->[1]), 10);
    my $e2 = $B->publish_event("/pub?topic=$ch", "B after $label");
    is($e1->[2]{redis}, 'forwarded', "$label: A's publish forwarded");
    my $want = $PRE . frames($e1, $e2);
    body_is($sa, $want, "$label: A's stream gets A's event and B's") or diag('the stream ' . ($sa->eof ? 'ended' : 'is open'));
    body_is($sb, $want, "$label: B's stream gets the same") or diag('the stream ' . ($sb->eof ? 'ended' : 'is open'));
    $sa->close;
    $sb->close;
}

ok(SSERedis::wait_connected($_), 'node :' . $_->port . ' is connected to Redis') for @nodes;
steady('at start');
fanout_works('start');

# --- (9) reloads -----------------------------------------------------------------------------------
for my $i (1 .. 3) {
    # A stream open across the reload ends cleanly (its client would reconnect to a new worker).
    my $s = $A->subscribe('/events?topics=across');
    my $old = (keys %{ owners($A) })[0];
    SSERedis::reload_node($A);
    ok($s->wait_eof(10), "reload $i of A: a stream of a retiring worker ends");
    steady("reload $i of A");
    ok(!exists owners($A)->{$old}, "reload $i of A: the retiring worker $old closed its connections");
    is(scalar(grep { /^sse-(?:sub|cmd)-$old$/ } $redis->client_names), 0, "reload $i of A: no sse- client named after $old");
    fanout_works("reload $i of A");
    $s->close;
}
SSERedis::reload_node($B);
steady('reload of B');
fanout_works('reload of B');

# Two reloads in a row, without waiting in between.
SSERedis::reload_node($A);
SSERedis::reload_node($A);
steady('two quick reloads of A');
fanout_works('two quick reloads of A');

# --- the worker holding the connections exits: another takes over ---------------------------------
{
    $A->allow_log(qr/exited on signal 9/);
    $A->allow_log(qr/shared memory zone .* was locked by/);
    my ($holder) = keys %{ owners($A) };
    ok(kill('KILL', $holder), "SIGKILL to A's Redis worker $holder");
    my $t0 = time;
    ok(SSETest::wait_until(sub { my $o = owners($A); my @p = keys %$o; @p == 1 && $p[0] != $holder && @{ $o->{ $p[0] } } == 2 }, 10),
       'another worker of A opened the two connections');
    my $took = time - $t0;
    cmp_ok($took, '<', 3, sprintf('the takeover took %.2f s (about 1 s is the promise)', $took));
    steady('after the kill');
    fanout_works('after the kill');
}

$_->finish for @nodes;
done_testing;

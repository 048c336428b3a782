# A Sentinel that misbehaves (issue 14): a fake sentinel (t/lib/FakeRedis.pm, sentinel mode) in
#   sse_redis redis-sentinel://127.0.0.1:S/mymaster;
# answers SENTINEL get-master-addr-by-name with the wrong type (an integer, an error, nil, a
# string, arrays of 1 element or with an integer in them), with an address that is not one (a
# host name, a port that is not a number, port 0, port 70000), with a string of 999 GB announced,
# or not at all; or, once the link is up, pushes a +switch-master message of the wrong shape (an
# array of 2), with too few words, or with a port that is not a number; or names, as the new
# primary, the one the link already uses (not a fault: the link stays up). Each case is a subtest
# with two fresh nginx nodes (2 workers each). Whatever the fake sends:
# - no worker exits (the same worker pids before and after), nothing at alert, crit or emerg;
# - each node logs the exact line below once (once per outage), and nothing else at warn or above;
#   where a sentinel's answer is only "not here" (nil) or breaks its connection, the info line
#   naming it is checked too, and the warn line repeats what it said;
# - the link asks the sentinel again under its backoff;
# - then the fake sentinel names a real redis-server: both links connect to it, and an event
#   published on A reaches B's stream through it, exactly.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use SSETest;
use SSERedis;
use FakeRedis;
use SSEExpect qw(frames);

my $locations = SSERedis::locations();

my $tuning = SSERedis::quick_link();

my $redis = SSERedis->new;
my $RP = $redis->port;
my $SP = SSETest::free_port();
my $sentinel = FakeRedis->new(port => $SP, sentinel => 1);
my $url = "redis-sentinel://127.0.0.1:$SP/mymaster";
my @nodes;
END { local $?; SSERedis::stop_at_end(\@nodes, $sentinel, $redis) }

my $PRE = ":ok\n\n";
my $S = "127.0.0.1:$SP";
my $WHERE = 'sse: redis at sentinel primary "mymaster" unreachable: ';
my $LOST = "sse: redis connection to 127.0.0.1:$RP lost: ";
my $AGAIN = '; queueing events and reconnecting';

my $good = FakeRedis::address_reply('127.0.0.1', $RP);

# name; reply: the sentinel's answer from the start (undef: silence); push: bytes pushed to the
# watchers once both links are up through a good answer; warn: the exact message of the one warn
# line each node logs; info: an info line that must be there too (the warn line does not say
# what was wrong: todo says why that is a fault).
my @cases = (
    {name => 'an integer for get-master-addr-by-name', reply => ":$RP\r\n",
     warn => $WHERE . 'an unexpected reply to SENTINEL get-master-addr-by-name: an integer; retrying'},
    {name => 'an error for get-master-addr-by-name', reply => "-ERR unknown sentinel subcommand\r\n",
     warn => $WHERE . "sentinel $S refused SENTINEL get-master-addr-by-name: ERR unknown sentinel subcommand; retrying"},
    {name => 'nil for get-master-addr-by-name (the sentinel does not monitor mymaster)', reply => "*-1\r\n",
     warn => $WHERE . qq(no sentinel answered: sentinel $S does not know the primary \\"mymaster\\"; retrying),
     info => qq(sse: redis sentinel $S does not know the primary "mymaster")},
    {name => 'a string for get-master-addr-by-name', reply => FakeRedis::bulk("127.0.0.1:$RP"),
     warn => $WHERE . 'an unexpected reply to SENTINEL get-master-addr-by-name: a string; retrying'},
    {name => 'an array of 1 element', reply => "*1\r\n" . FakeRedis::bulk('127.0.0.1'),
     warn => $WHERE . 'an unexpected reply to SENTINEL get-master-addr-by-name: an array of 1; retrying'},
    {name => 'an array of 2 with an integer for the port', reply => "*2\r\n" . FakeRedis::bulk('127.0.0.1') . ":$RP\r\n",
     warn => $WHERE . 'an unexpected reply to SENTINEL get-master-addr-by-name: an array of 2; retrying'},
    {name => 'a port that is not a number', reply => FakeRedis::address_reply('127.0.0.1', '63x79'),
     warn => $WHERE . qq(sentinel $S named the primary \\"127.0.0.1:63x79\\", which is not a numeric address and port; retrying)},
    {name => 'port 0', reply => FakeRedis::address_reply('127.0.0.1', '0'),
     warn => $WHERE . qq(sentinel $S named the primary \\"127.0.0.1:0\\", which is not a numeric address and port; retrying)},
    {name => 'port 70000', reply => FakeRedis::address_reply('127.0.0.1', '70000'),
     warn => $WHERE . qq(sentinel $S named the primary \\"127.0.0.1:70000\\", which is not a numeric address and port; retrying)},
    {name => 'a host name, not an address', reply => FakeRedis::address_reply('redis.example', $RP),
     warn => $WHERE . qq(sentinel $S named the primary \\"redis.example:$RP\\", which is not a numeric address and port; retrying)},
    {name => 'a string of 999 GB announced for the port (1 MiB of it sent)',
     reply => "*2\r\n" . FakeRedis::bulk('127.0.0.1') . "\$999000000000\r\n" . ('7' x (1 << 20)),
     warn => $WHERE . "no sentinel answered: sentinel $S: a string too long (over 512 MB); retrying",
     info => "sse: redis sentinel $S: a string too long (over 512 MB)"},
    {name => 'silence: the sentinel never answers', reply => undef,
     warn => $WHERE . 'no answer within sse_redis_connect_timeout; retrying'},
    {name => '+switch-master, link up: a push of 2 elements', push => "*2\r\n" . FakeRedis::bulk('message') . FakeRedis::bulk('+switch-master'),
     warn => $LOST . "an unexpected message from sentinel $S: an array of 2" . $AGAIN},
    {name => '+switch-master, link up: too few words', push => FakeRedis::push_message('+switch-master', "mymaster 127.0.0.1 $RP"),
     warn => $LOST . "the sentinels switched the primary (127.0.0.1 $RP)" . $AGAIN},
    {name => '+switch-master, link up: a port that is not a number',
     push => FakeRedis::push_message('+switch-master', "mymaster 127.0.0.1 $RP 127.0.0.1 notaport"),
     warn => $LOST . "the sentinels switched the primary (127.0.0.1 $RP 127.0.0.1 notaport)" . $AGAIN},
    # Not a fault: the link already follows the primary a failover names (it asked a sentinel
    # after the switch, before the message came). It stays up: no warn line, no reconnect.
    {name => '+switch-master, link up: to the primary the link already uses',
     push => FakeRedis::push_message('+switch-master', "mymaster 127.0.0.1 1 127.0.0.1 $RP"), warn => undef,
     info => "sse: redis sentinels switched the primary to 127.0.0.1:$RP, which this node already uses"},
);

# The messages of a node's lines at $level (warn: warn and above), in order.
sub messages {
    my ($node, $level) = @_;
    my $levels = $level eq 'warn' ? 'warn|error|crit|alert|emerg' : $level;
    return map { /\[(?:$levels)\] \d+#\d+: (?:\*\d+ )?(.*)$/ ? $1 : () } split /\n/, $node->error_log;
}

sub same_workers {
    my ($pids, $when) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    for my $i (0 .. $#nodes) {
        is_deeply([$nodes[$i]->worker_pids], $pids->[$i], 'node ' . ('A', 'B')[$i] . ": the same workers $when");
    }
}

sub asks { scalar $sentinel->received(qr/^SENTINEL get-master-addr-by-name mymaster$/) }

sub run_case {
    my ($n, $c) = @_;
    my $ch = "s$n";
    $sentinel->master_reply($c->{push} ? $good : $c->{reply});
    my $asks = asks();
    @nodes = map { SSETest->new(http => "    sse_redis $url;\n$tuning", server => $locations)->start } 1 .. 2;
    my ($A, $B) = @nodes;
    my @pids = map { [$_->worker_pids] } @nodes;
    my $sb = $B->subscribe("/events?topics=$ch");

    if ($c->{push}) {
        ok(SSERedis::wait_connected($_, 10), 'a link is up through the good answer') for @nodes;
        ok($redis->wait_numsub("sse:$ch", 1), "B listens to sse:$ch");
        ok(SSETest::wait_until(sub { $sentinel->received(qr/^SUBSCRIBE \+switch-master$/) >= 2 }, 5),
           'both links watch +switch-master');
        my $pushed = $sentinel->pushed;
        $sentinel->push_to_watchers($c->{push});
        is($sentinel->pushed - $pushed, 2, 'the fake pushed the message to both watchers');
    } else {
        ok(SSETest::wait_until(sub { asks() >= $asks + 4 }, 10),
           'both links asked the sentinel again under the backoff (' . (asks() - $asks) . ' asks)');
    }
    for my $i (0 .. 1) {
        my $name = ('A', 'B')[$i];
        if (!defined $c->{warn}) {
            ok(SSETest::wait_until(sub { grep { $_ eq $c->{info} } messages($nodes[$i], 'info') }, 8),
               "node $name logs: [info] $c->{info}");
            is($nodes[$i]->stats->{redis}{reconnects}, 0, "node $name: the link stayed up (no reconnect)");
            next;
        }
        ok(SSETest::wait_until(sub { grep { $_ eq $c->{warn} } messages($nodes[$i], 'warn') }, 8),
           "node $name logs: [warn] $c->{warn}") or diag(join "\n", messages($nodes[$i], 'warn'));
        if ($c->{info}) {
            ok(scalar(grep { $_ eq $c->{info} } messages($nodes[$i], 'info')), "node $name logs: [info] $c->{info}");
        }
    }
    same_workers(\@pids, 'while the sentinel misbehaves');

    # The sentinel names the real Redis.
    $sentinel->master_reply($good);
    ok(SSERedis::wait_connected($_, 10), 'node ' . ($_ == $A ? 'A' : 'B') . ' connects to the real Redis') for @nodes;
    ok($redis->wait_numsub("sse:$ch", 1), "B listens to sse:$ch in the real Redis");
    my @events = map { $A->publish_event("/pub?topic=$ch", "$ch event $_") } 1 .. 2;
    my $want = $PRE . frames(@events);
    $sb->wait_body(length $want, 10);
    $sb->drain(0.1);
    is($sb->body, $want, "B's stream gets A's events through the real Redis, exactly");
    same_workers(\@pids, 'after the recovery');

    for my $i (0 .. 1) {
        my $name = ('A', 'B')[$i];
        my @warn = messages($nodes[$i], 'warn');
        is_deeply(\@warn, [grep { defined } $c->{warn}], "node $name: that one line at warn or above, nothing else")
            or diag(join "\n", @warn);
        if ($c->{todo}) {
            TODO: {
                local $TODO = $c->{todo};
                ok(!grep({ $_ eq "${WHERE}no sentinel answered; retrying" } @warn),
                   "node $name: the warn line names what the sentinel did wrong");
            }
        }
        my @info = grep { /^sse: redis sentinel / } messages($nodes[$i], 'info');
        note("node $name: " . scalar(@info) . " info lines about the sentinel") if @info;
    }
    $sb->close;
    kill 'QUIT', grep { defined } map { $_->master_pid } @nodes;
    $_->finish for @nodes;
    @nodes = ();
}

# SSE_CASES=3,7 runs those cases only.
SSETest::run_cases(\@cases, \&run_case, sub {
    diag("the fake sentinel's log, the end:\n" . $sentinel->log_tail(30));
    SSERedis::diag_unfinished(@nodes);
    $_->stop for @nodes;
    @nodes = ();
});

done_testing;

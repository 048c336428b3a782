# A Redis that misbehaves (t/lib/FakeRedis.pm, a fake server on the port a real redis-server takes
# over afterwards): unsolicited replies, wrong reply types, truncated replies, a 999 GB length,
# 10,000-deep nesting, negative lengths, error replies, silence, garbage, pushes of the wrong shape,
# each at the handshake and once the link is up. Each case is a subtest with two fresh nginx nodes
# (2 workers each). Whatever the fake sends:
# - no worker exits (the same worker pids before and after; no "exited" line), nothing is logged
#   at alert, crit or emerg;
# - each node whose link met the misbehaviour logs it once per outage (a "lost" or "unreachable"
#   warn line, or "refused" for an error reply at the handshake) with a reason naming what was
#   wrong, and nothing else at warn or above;
# - the link retries under its backoff (the fake sees it come back, but not in a tight loop);
# - a node's own streams get its own events at once while the link is broken;
# - then the fake stops and a real redis-server starts on the same port: both links connect, and
#   B's stream gets every event A published, during the misbehaviour and after it, in order, once
#   (what Redis never acknowledged is sent again from A's queue).
# A well-formed message whose payload cannot be read is no fault of the link: it is ignored with
# one warn line and the link stays up (any Redis client can PUBLISH such a message).
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

# The real Redis that takes over the port: alice for the cases with AUTH and SELECT, the default
# user (no password) for the others. Not started: its port is held until a fake listens on it.
my $redis = SSERedis->new(start => 0, users => [[alice => 'pw']]);
my $port = $redis->port;
my (@nodes, $fake);
END { local $?; SSERedis::stop_at_end(\@nodes, $fake, $redis) }

my $PRE = ":ok\n\n";

sub bulk { FakeRedis::bulk(@_) }
sub message { FakeRedis::push_message(@_) }

# Random bytes, the same on every run, starting with a NUL and 0xff.
my $garbage = do { srand(58); "\x00\xff" . join '', map { chr int rand 256 } 1 .. 4096 };
my $deep = ("*1\r\n" x 10_000) . ":1\r\n";

# What the reason of a node's line must say (generous in wording, strict in meaning).
my %REASON = (
    unexpected => qr/unexpected|unsolicited|protocol|not asked|nothing (was )?asked|no command/i,
    type       => qr/unexpected|wrong|type|protocol|invalid|malformed/i,
    closed     => qr/clos|reset|EOF|end of|truncat/i,
    timeout    => qr/time|within|no (reply|answer)|silen/i,
    size       => qr/too (large|long|big)|out of range|limit|exceed|size/i,
    nesting    => qr/nest|depth|deep/i,
    negative   => qr/out of range|negative|invalid|bad|protocol/i,
    error      => qr/ERR nope/,
    readonly   => qr/READONLY/,
    garbage    => qr/protocol|unexpected|invalid|garbage|type byte|malformed/i,
    shape      => qr/unexpected|invalid|malformed|protocol|wrong|shape|type/i,
);

# name: what the subtest says; fake: FakeRedis's options; steady: the fake takes both links up
# before misbehaving (else it misbehaves in the handshake); notice: the nodes whose link must meet
# it (A publishes, both have a stream; the fake stops answering A's command connection at A's first
# FCALL sse_publish, so a later command there may time out first); reason: a key of %REASON; auth:
# the URL has a user, password and db (AUTH and SELECT in the handshake); up: the link must stay
# up (hub).
my @cases = (
    {name => 'unsolicited: +OK four times for the first command (the crash of issue 11)',
     fake => {on => 'first', send => "+OK\r\n" x 4}, notice => 'AB', reason => 'unexpected'},
    {name => 'unsolicited: +OK twice on the subscribe connection after a SUBSCRIBE, link up',
     fake => {on => 'channel SUBSCRIBE', after_reply => 1, send => "+OK\r\n+OK\r\n"}, steady => 1, notice => 'AB',
     reason => 'unexpected'},
    {name => "wrong type: an integer for the SUBSCRIBE of the node's own channels",
     fake => {on => 'node SUBSCRIBE', send => ":1\r\n"}, notice => 'AB', reason => 'type'},
    {name => 'wrong type: an array for FCALL sse_publish, link up',
     fake => {on => 'FCALL sse_publish', send => "*2\r\n:1\r\n:2\r\n"}, steady => 1, notice => 'A', reason => 'type',
     auth => 1},
    {name => 'an error reply to FCALL sse_publish (a replica: READONLY), link up: the event is not acknowledged',
     fake => {on => 'FCALL sse_publish', send => "-READONLY You can't write against a read only replica.\r\n"},
     steady => 1, notice => 'A', reason => 'readonly'},
    {name => 'wrong type: a bulk string for FCALL sse_history, link up',
     fake => {on => 'FCALL sse_history', send => bulk('abc')}, steady => 1, notice => 'B', reason => 'type'},
    {name => 'truncated: half a reply to FUNCTION LOAD, then the connection closes',
     fake => {on => 'FUNCTION LOAD', send => "\$3\r\nss", then => 'close'}, notice => 'AB', reason => 'closed'},
    {name => 'truncated: half a reply to FCALL sse_publish, then silence, link up',
     fake => {on => 'FCALL sse_publish', send => "\$19\r\n17954495", then => 'silence'}, steady => 1, notice => 'A',
     reason => 'timeout'},
    {name => '999 GB: a bulk string of 999,000,000,000 bytes announced for CLIENT SETNAME (1 MiB of it sent)',
     fake => {on => 'CLIENT SETNAME', send => "\$999000000000\r\n" . ('x' x (1 << 20)), then => 'silence'},
     notice => 'AB', reason => 'size', auth => 1},
    {name => '999 GB: an array of 999,000,000,000 elements for FCALL sse_publish, link up',
     fake => {on => 'FCALL sse_publish', send => "*999000000000\r\n" . (":1\r\n" x 10_000), then => 'silence'},
     steady => 1, notice => 'A', reason => 'size'},
    {name => 'nesting: arrays 10,000 deep for the first command',
     fake => {on => 'first', send => $deep}, notice => 'AB', reason => 'nesting', auth => 1},
    {name => 'negative length: $-5 for the first command',
     fake => {on => 'first', send => "\$-5\r\n"}, notice => 'AB', reason => 'negative', auth => 1},
    {name => 'negative length: *-7 for FCALL sse_publish, link up',
     fake => {on => 'FCALL sse_publish', send => "*-7\r\n"}, steady => 1, notice => 'A', reason => 'negative'},
    {name => 'error replies to every command',
     fake => {on => 'every', send => "-ERR nope\r\n"}, notice => 'AB', reason => 'error', auth => 1},
    {name => 'error replies to every command after the handshake, link up',
     fake => {on => 'steady', send => "-ERR nope\r\n"}, steady => 1, notice => 'AB', reason => 'error'},
    {name => 'silence: connections accepted, nothing ever answered',
     fake => {on => 'first', send => '', then => 'silence'}, notice => 'AB', reason => 'timeout'},
    {name => 'silence after the handshake, link up',
     fake => {on => 'steady', send => '', then => 'silence'}, steady => 1, notice => 'AB', reason => 'timeout'},
    {name => 'garbage: 4 KB of random bytes as soon as a connection is accepted',
     fake => {on => 'accept', send => $garbage}, notice => 'AB', reason => 'garbage'},
    {name => "a push of the wrong shape after the node's SUBSCRIBE: message with integers for channel and payload",
     fake => {on => 'node SUBSCRIBE', after_reply => 1, send => "*3\r\n\$7\r\nmessage\r\n:5\r\n:6\r\n"},
     notice => 'AB', reason => 'shape'},
    {name => "pushes of the wrong shape on a stream's channel: two elements; an array for payload, link up",
     fake => {on => 'channel SUBSCRIBE', after_reply => 1,
              send => sub { my $ch = $_[0][1]; "*2\r\n" . bulk('message') . bulk($ch) . "*3\r\n" . bulk('message') . bulk($ch) . "*1\r\n:1\r\n" }},
     steady => 1, notice => 'AB', reason => 'shape'},
    {name => 'well-formed messages with unreadable payloads, on a channel and the control channel (the link stays up)',
     fake => {on => 'channel SUBSCRIBE', after_reply => 1, hub => 1,
              send => sub {
                  my $ch = $_[0][1];
                  join '', (map { message($ch, $_) } 'not json{', '[1,2,3]', '{"i":"abc","d":"x"}',
                                  qq({"i":"12","e":"a\\nb","d":"x"}), "\xff\xfe\x00"),
                           message('sse:#control', 'not json{');
              }},
     steady => 1, up => 1},
);

# The link's lines in a node's error.log, in order: [kind, reason, line] with kind one of up
# (connected or reconnected), lost, unreachable, refused.
sub link_lines {
    my ($text) = @_;
    my @l;
    for my $line (split /\n/, $text) {
        if ($line =~ /sse: redis (?:re)?connected to /) {
            push @l, ['up', '', $line];
        } elsif ($line =~ /sse: redis connection to \S+ lost: (.*); queueing events and reconnecting$/) {
            push @l, ['lost', $1, $line];
        } elsif ($line =~ /sse: redis at \S+ unreachable: (.*); retrying$/) {
            push @l, ['unreachable', $1, $line];
        } elsif ($line =~ /sse: redis at \S+ refused (.*)$/) {
            push @l, ['refused', $1, $line];
        }
    }
    return @l;
}

# Lines of the same kind twice within one outage (between two "up" lines).
sub repeated_in_outage {
    my (@l) = @_;
    my (%seen, @twice);
    for my $x (@l) {
        if ($x->[0] eq 'up') { %seen = (); next }
        push @twice, $x->[2] if $seen{ $x->[0] }++;
    }
    return @twice;
}

sub exit_lines {
    my ($node) = @_;
    return grep { /exited on signal|worker process \d+ exited/ } split /\n/, $node->error_log;
}

sub same_workers {
    my ($pids, $when) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    for my $i (0 .. $#nodes) {
        my $name = ('A', 'B')[$i];
        my @now = $nodes[$i]->worker_pids;
        is("@now", "@{ $pids->[$i] }", "$when: node $name runs the same workers (@{ $pids->[$i] })");
        my @exits = exit_lines($nodes[$i]);
        ok(!@exits, "$when: no worker of node $name exited") or diag(join "\n", @exits[0 .. ($#exits < 4 ? $#exits : 4)]);
    }
}

sub body_is {
    my ($s, $want, $label, $timeout) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    $s->wait_body(length $want, $timeout // 10);
    $s->drain(0.1) if length($s->body) == length $want;
    return is($s->body, $want, $label);
}

sub run_case {
    my ($n, $c) = @_;
    my $ch = "m$n";
    my $url = $c->{auth} ? $redis->url(user => 'alice', password => 'pw', db => 2) : $redis->url;
    $redis->release_port;
    $fake = FakeRedis->new(port => $port, %{ $c->{fake} });
    my $t0 = time;
    @nodes = $redis->nodes(2, server => $locations, http => $tuning, url => $url);
    my ($A, $B) = @nodes;
    my %by_name = (A => $A, B => $B);
    my @pids = map { [$_->worker_pids] } @nodes;
    if ($c->{steady}) {
        ok(SSERedis::wait_connected($_, 5), 'the fake took node ' . ($_ == $A ? 'A' : 'B') . "'s link through the handshake")
            for @nodes;
    }
    my $sa = $A->subscribe("/events?topics=$ch");
    my $sb = $B->subscribe("/events?topics=$ch");
    if ($c->{steady}) {
        ok(SSETest::wait_until(sub { $fake->received(qr/^SUBSCRIBE sse:$ch$/) >= 2 }, 5),
           'both links sent SUBSCRIBE of the channel to the fake');
    }

    # While the fake misbehaves: A's stream gets A's events at once.
    my @during = map { $A->publish_event("/pub?topic=$ch", "$ch during $_") } 1 .. 3;
    body_is($sa, $PRE . frames(@during), "A's stream gets A's 3 events at once, exactly");
    my @notice = map { $by_name{$_} } split //, $c->{notice} // '';
    for my $node (@notice) {
        my $name = $node == $A ? 'A' : 'B';
        ok(SSETest::wait_until(sub { grep { $_->[0] ne 'up' } link_lines($node->error_log) }, 8),
           "node $name logged that its link failed");
    }
    if (!$c->{up}) {
        # More connections than the first attempt of both nodes (2 each): a link came back.
        ok(SSETest::wait_until(sub { $fake->connections > 4 && $fake->misbehaved >= 2 }, 8),
           'the link came back and met the misbehaviour again (' . $fake->connections . ' connections, misbehaved '
               . $fake->misbehaved . ' times)');
    } else {
        body_is($sb, $PRE . frames(@during), "B's stream gets A's 3 events through the fake");
        for my $node (@nodes) {
            is($node->stats->{redis}{state}, 'connected', 'node ' . ($node == $A ? 'A' : 'B') . "'s link is still up");
        }
    }
    same_workers(\@pids, 'during the misbehaviour');
    my $elapsed = time - $t0;
    my %cut = map { $_ => length $_->error_log } @nodes;
    my $connections = $fake->connections;
    my $fake_log = $fake->log_text;
    $fake->stop;
    $fake = undef;

    # A real Redis takes the port over.
    $redis->start;
    ok(SSERedis::wait_connected($_, 10), 'node ' . ($_ == $A ? 'A' : 'B') . ' connects to the real Redis') for @nodes;
    ok($redis->wait_numsub("sse:$ch", 2), "both nodes listen to sse:$ch in the real Redis");
    ok($redis->wait_clients(4), 'CLIENT LIST: 4 sse- clients');
    my @after = map { $A->publish_event("/pub?topic=$ch", "$ch after $_") } 1 .. 2;
    my $want = $PRE . frames(@during, @after);
    body_is($sb, $want, "B's stream: A's events during and after the misbehaviour, in order, once, exactly");
    body_is($sa, $want, "A's stream: the same");
    same_workers(\@pids, 'after the recovery');

    # The logs.
    for my $i (0 .. $#nodes) {
        my $node = $nodes[$i];
        my $name = ('A', 'B')[$i];
        my $text = $node->error_log;
        my @all = link_lines($text);
        my @before = grep { $_->[0] ne 'up' } link_lines(substr $text, 0, $cut{$node});
        my $show = join "\n", map { "  $_->[2]" } @all;
        diag("node $name, the link's lines:\n$show") if $ENV{SSE_VERBOSE};
        my @twice = repeated_in_outage(@all);
        ok(!@twice, "node $name: one line per kind per outage") or diag("repeated:\n" . join("\n", @twice) . "\nall:\n$show");
        if ($c->{up}) {
            is(scalar @before, 0, "node $name: no link failure while the fake ran") or diag($show);
            my @ignored = grep { /\[warn\].*sse: ignored a message from redis at 127\.0\.0\.1:$port: / } split /\n/, $text;
            is(scalar @ignored, 1, "node $name: one warn line for the messages it ignored")
                or diag(join "\n", grep { /sse: / } split /\n/, $text);
        } elsif ($c->{notice} =~ $name) {
            my $re = $REASON{ $c->{reason} };
            my @wrong = grep { $_->[1] !~ $re } @before;
            ok(@before && !@wrong, "node $name: each failure line while the fake ran names the fault ($c->{reason}: $re)")
                or diag("lines:\n$show");
            if ($c->{reason} !~ /^(error|readonly)$/) {
                my @refused = grep { $_->[0] eq 'refused' } @before;
                ok(!@refused, "node $name: no 'refused' line (no error reply was sent)") or diag($show);
            }
        }
        my @other = grep {
            /\[(warn|error|crit|alert|emerg)\]/
                && !/sse: redis (connection to \S+ lost|at \S+ (unreachable|refused))/
                && !($c->{up} && /sse: ignored a message from redis/)
        } split /\n/, $text;
        ok(!@other, "node $name: nothing else at warn or above") or diag(join "\n", @other[0 .. ($#other < 9 ? $#other : 9)]);
    }
    # Under the backoff (first delay 50 ms, halved at most by the jitter): no tight loop.
    my $bound = int(2 * 2 * ($elapsed / 0.025 + 2));
    cmp_ok($connections, '<=', $bound, sprintf('the fake saw %d connections in %.1f s (at most %d under the backoff)',
                                               $connections, $elapsed, $bound));
    $_->close for $sa, $sb;
    diag("the fake's log, the end:\n" . join "\n", grep { defined } (split /\n/, $fake_log)[-30 .. -1])
        if $ENV{SSE_VERBOSE} || !Test::More->builder->is_passing;
    # Both nodes stop at once (a graceful stop takes a second or two).
    kill 'QUIT', grep { defined } map { $_->master_pid } @nodes;
    $_->finish for @nodes;
    @nodes = ();
    $redis->stop;
}

# SSE_CASES=3,7 runs those cases only; SSE_VERBOSE=1 shows each node's link lines and the end of
# the fake's log.
my $t_start = time;
SSETest::run_cases(\@cases, \&run_case, sub {
    diag("the fake's log, the end:\n" . $fake->log_tail(30)) if $fake;
    SSERedis::diag_unfinished(@nodes);
    $_->stop for @nodes;
    @nodes = ();
    $fake->stop if $fake;
    $fake = undef;
    $redis->stop if $redis->running;
    $redis->hold_port unless $redis->{holder};
});
diag(sprintf '%d cases in %.1f s', scalar @cases, time - $t_start);
done_testing;
